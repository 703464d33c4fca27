package resync_test

import (
	"context"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// module is this module's path.
const module = "github.com/resyncd/resync"

// The layers of the module's packages, from the bottom:
//
//   - schema, the vocabulary: it imports nothing of the module (nor etcd),
//     so every other package may import it;
//   - internal/ (but internal/testing/): the machinery the library and the
//     binaries share (listwatch, backoff, etcderr, ...). It may import
//     schema and other internal packages, never a library package above
//     it: the root package resync, registry, watcher, coordinator;
//   - the library packages: resync, registry, watcher, coordinator;
//   - the binaries, cmd/*, with their own internal packages
//     (cmd/resyncd/internal/metrics, a coordinator.Hooks), which may import
//     anything of the library;
//   - test code: internal/testing/ (the harnesses: etcdtest, handagent)
//     and integration/, which may import anything and which no other
//     package may depend on outside its _test.go files.
//
// libraryPkgs are the library packages above internal/.
var libraryPkgs = []string{module, module + "/registry", module + "/watcher", module + "/coordinator"}

func under(pkg, dir string) bool { return pkg == dir || strings.HasPrefix(pkg, dir+"/") }

func isHarness(pkg string) bool { return under(pkg, module+"/internal/testing") }

// isTestCode: harnesses and the integration tests' shared code.
func isTestCode(pkg string) bool { return isHarness(pkg) || under(pkg, module+"/integration") }

// listed is one package of `go list -deps`: its direct imports and all
// its dependencies, without its tests'.
type listed struct {
	imports, deps []string
}

// goList lists every package of the module and its dependencies with
// the build tags.
func goList(t *testing.T, goTool, tags string) map[string]listed {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "list", "-deps", "-tags="+tags,
		"-f", `{{.ImportPath}}{{"\t"}}{{join .Imports " "}}{{"\t"}}{{join .Deps " "}}`, "./...")
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]listed{}
	for line := range strings.Lines(string(out)) {
		f := strings.Split(strings.TrimRight(line, "\n"), "\t")
		if len(f) != 3 {
			t.Fatalf("go list printed %q: want path, imports and deps separated by tabs", line)
		}
		if under(f[0], module) {
			pkgs[f[0]] = listed{imports: strings.Fields(f[1]), deps: strings.Fields(f[2])}
		}
	}
	for _, want := range append([]string{module + "/schema", module + "/cmd/resyncd", module + "/internal/listwatch", module + "/internal/testing/etcdtest"}, libraryPkgs...) {
		if _, ok := pkgs[want]; !ok {
			t.Fatalf("go list did not list %s: the layers below would be checked on nothing", want)
		}
	}
	return pkgs
}

// TestPackageLayers checks the layers above with `go list -deps`: no
// runtime package (library, internal, cmd/*, scripts) depends on a test
// harness, no internal package imports a library package, and schema
// depends on nothing of the module or of etcd. The chaos build
// (-tags resync_chaos) is checked too.
func TestPackageLayers(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the go tool is not on PATH (%v): the package layers cannot be listed here", err)
	}
	for _, tags := range []string{"", "resync_chaos"} {
		t.Run("tags="+tags, func(t *testing.T) {
			pkgs := goList(t, goTool, tags)
			for _, p := range slices.Sorted(maps.Keys(pkgs)) {
				l := pkgs[p]
				if !isTestCode(p) {
					for _, d := range l.deps {
						if isHarness(d) {
							t.Errorf("%s depends on the test harness %s: harnesses are for _test.go files only", p, d)
						}
					}
				}
				if under(p, module+"/internal") && !isHarness(p) {
					for _, i := range l.imports {
						if slices.Contains(libraryPkgs, i) {
							t.Errorf("%s imports the library package %s: internal/ lies below the library (it may import schema and internal/ only)", p, i)
						}
					}
				}
				if p == module+"/schema" {
					for _, d := range l.deps {
						if under(d, module) || strings.HasPrefix(d, "go.etcd.io/") {
							t.Errorf("schema depends on %s: it is the foundation, importing nothing of the module nor etcd", d)
						}
					}
				}
			}
		})
	}
}
