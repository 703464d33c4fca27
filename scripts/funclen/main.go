// Command funclen reports function lengths: the longest functions of the
// library (every package outside cmd/, scripts/ and integration/, test files
// excluded) and the mean function length of each command in cmd/ (test files
// excluded). make lint runs it as a report; it never fails the build on the
// numbers, only on a file it cannot parse.
//
// A function's length is its lines from "func" to the closing brace, both
// included; methods count as functions, function literals count as part of
// the function that holds them.
//
//	go run ./scripts/funclen [-top 10] [-root .]
package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
)

// function is one declared function or method and its length in lines.
type function struct {
	name  string // "pkg/dir.Func" or "pkg/dir.(Type).Method"
	pos   string // file:line
	lines int
}

func main() {
	top := flag.Int("top", 10, "how many of the library's longest functions to list")
	cmdTop := flag.Int("cmd-top", 0, "how many of cmd/'s longest functions to list")
	root := flag.String("root", ".", "the module's root directory")
	flag.Parse()
	lib, cmds, err := collect(*root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "funclen:", err)
		os.Exit(1)
	}
	report(os.Stdout, lib, cmds, *top)
	if *cmdTop > 0 {
		var all []function
		for _, funcs := range cmds {
			all = append(all, funcs...)
		}
		fmt.Println()
		longest(os.Stdout, all, *cmdTop)
	}
}

// collect parses every non-test Go file under root and sorts its functions
// into the library's and each command's (keyed by its cmd/ directory).
func collect(root string) (lib []function, cmds map[string][]function, err error) {
	cmds = map[string][]function{}
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			return skipDir(rel, d.Name())
		}
		if !strings.HasSuffix(rel, ".go") || strings.HasSuffix(rel, "_test.go") {
			return nil
		}
		funcs, err := parseFile(fset, path, rel)
		if err != nil {
			return err
		}
		if cmd, ok := commandOf(rel); ok {
			cmds[cmd] = append(cmds[cmd], funcs...)
		} else {
			lib = append(lib, funcs...)
		}
		return nil
	})
	return lib, cmds, err
}

// skipDir skips what is neither library nor command: scripts, the
// integration tests, testdata, and hidden or vendored directories.
func skipDir(rel, name string) error {
	if rel == "." {
		return nil
	}
	switch {
	case rel == "scripts", rel == "integration", name == "testdata", name == "vendor",
		strings.HasPrefix(name, "."), strings.HasPrefix(name, "_"):
		return filepath.SkipDir
	}
	return nil
}

// commandOf returns "cmd/<name>" for a file of a command.
func commandOf(rel string) (string, bool) {
	parts := strings.Split(rel, "/")
	if len(parts) >= 3 && parts[0] == "cmd" {
		return parts[0] + "/" + parts[1], true
	}
	return "", false
}

// parseFile returns the functions declared in one file.
func parseFile(fset *token.FileSet, path, rel string) ([]function, error) {
	file, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w (fix the file or run gofmt on it)", rel, err)
	}
	var funcs []function
	for _, decl := range file.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Body == nil {
			continue
		}
		start, end := fset.Position(fn.Pos()), fset.Position(fn.End())
		funcs = append(funcs, function{
			name:  filepath.ToSlash(filepath.Dir(rel)) + "." + funcName(fn),
			pos:   fmt.Sprintf("%s:%d", rel, start.Line),
			lines: end.Line - start.Line + 1,
		})
	}
	return funcs, nil
}

// funcName is "Func" or "(Type).Method".
func funcName(fn *ast.FuncDecl) string {
	if fn.Recv == nil || len(fn.Recv.List) == 0 {
		return fn.Name.Name
	}
	typ := fn.Recv.List[0].Type
	if star, ok := typ.(*ast.StarExpr); ok {
		typ = star.X
	}
	if idx, ok := typ.(*ast.IndexExpr); ok {
		typ = idx.X
	}
	if idx, ok := typ.(*ast.IndexListExpr); ok {
		typ = idx.X
	}
	if id, ok := typ.(*ast.Ident); ok {
		return "(" + id.Name + ")." + fn.Name.Name
	}
	return fn.Name.Name
}

// stats is the count, mean and maximum of a set of functions.
type stats struct {
	count int
	mean  float64
	max   int
}

func measure(funcs []function) stats {
	var s stats
	total := 0
	for _, f := range funcs {
		total += f.lines
		s.max = max(s.max, f.lines)
	}
	s.count = len(funcs)
	if s.count > 0 {
		s.mean = float64(total) / float64(s.count)
	}
	return s
}

// report prints the library's longest functions, then the mean length
// per command and over all of cmd/.
func report(w io.Writer, lib []function, cmds map[string][]function, top int) {
	ls := measure(lib)
	fmt.Fprintf(w, "library: %d functions, mean %.1f lines, longest %d (goal: longest <= 80)\n", ls.count, ls.mean, ls.max)
	longest(w, lib, top)

	names := make([]string, 0, len(cmds))
	var all []function
	for name, funcs := range cmds {
		names = append(names, name)
		all = append(all, funcs...)
	}
	sort.Strings(names)
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "command\tfunctions\tmean lines\tlongest")
	for _, name := range names {
		s := measure(cmds[name])
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%d\n", name, s.count, s.mean, s.max)
	}
	s := measure(all)
	fmt.Fprintf(tw, "cmd/ (all)\t%d\t%.2f\t%d\t(goal: mean <= 16)\n", s.count, s.mean, s.max)
	tw.Flush()
}

// longest prints the top longest of funcs, longest first.
func longest(w io.Writer, funcs []function, top int) {
	sort.SliceStable(funcs, func(i, j int) bool {
		if funcs[i].lines != funcs[j].lines {
			return funcs[i].lines > funcs[j].lines
		}
		return funcs[i].pos < funcs[j].pos
	})
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "lines\tfunction\tat")
	for _, f := range funcs[:min(top, len(funcs))] {
		fmt.Fprintf(tw, "%5d\t%s\t%s\n", f.lines, f.name, f.pos)
	}
	tw.Flush()
}
