package resync_test

// Tests over the documentation: README.md is the front door and docs/ holds
// the reference. Every relative link of README.md and docs/*.md, and every
// link of the deploy files into this repository (the alerts' runbooks, the
// dashboard), must reach an existing file and, for a markdown file, an
// existing heading; every docs/ page must be linked from README.md; and
// README's porting diff must keep the shape of porting_test.go. None of it
// needs etcd.

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"unicode"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync"
)

// repoURL is how files outside the repository's markdown (the Prometheus
// rules, the dashboard) link into it; such a link is checked like a
// relative one from the repository's root.
const repoURL = "https://github.com/resyncd/resync/blob/main/"

var (
	// mdLink matches an inline link or image: [text](target) or
	// ![alt](target), with an optional "title".
	mdLink = regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	// codeSpan matches inline code, whose brackets are no links.
	codeSpan = regexp.MustCompile("``[^`]*``|`[^`]*`")
	// heading matches an ATX heading and captures its text.
	heading = regexp.MustCompile(`^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$`)
	// scheme matches a link with a scheme (https:, mailto:): external.
	scheme = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
	// repoLink matches a link into this repository in any text file.
	repoLink = regexp.MustCompile(regexp.QuoteMeta(repoURL) + `[^\s"')]+`)
)

// githubAnchor is GitHub's anchor of a heading's text: lower case, spaces
// as '-', every character other than a letter, a digit, '-' or '_'
// dropped (so inline code's backticks and a "1." go).
func githubAnchor(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(h)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// mdLinkAt is one link of a markdown file and the line it is on.
type mdLinkAt struct {
	line   int
	target string
}

// parseMarkdown returns a document's heading anchors (a repeated heading
// gets GitHub's -1, -2, ... suffixes) and its links, outside fenced code
// blocks and inline code.
func parseMarkdown(text string) (anchors map[string]bool, links []mdLinkAt) {
	anchors = map[string]bool{}
	seen := map[string]int{}
	fence := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimLeft(line, " ")
		if fence != "" {
			if strings.HasPrefix(trimmed, fence) {
				fence = ""
			}
			continue
		}
		if strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~") {
			fence = trimmed[:3]
			continue
		}
		line = codeSpan.ReplaceAllString(line, "")
		if m := heading.FindStringSubmatch(line); m != nil {
			a := githubAnchor(mdLink.ReplaceAllStringFunc(m[1], linkText))
			if k := seen[a]; k > 0 {
				anchors[fmt.Sprintf("%s-%d", a, k)] = true
			} else {
				anchors[a] = true
			}
			seen[a]++
		}
		for _, m := range mdLink.FindAllStringSubmatch(line, -1) {
			links = append(links, mdLinkAt{line: n, target: m[1]})
		}
	}
	return anchors, links
}

// linkText is a link's text, as GitHub uses it in a heading's anchor.
func linkText(link string) string {
	return link[strings.Index(link, "[")+1 : strings.Index(link, "]")]
}

// linkChecker checks links against the files of one tree (the repository,
// or a made-up one in the tests), parsing each markdown file once.
type linkChecker struct {
	fsys    fs.FS
	anchors map[string]map[string]bool // markdown file -> its anchors
}

func newLinkChecker(fsys fs.FS) *linkChecker {
	return &linkChecker{fsys: fsys, anchors: map[string]map[string]bool{}}
}

// fileAnchors returns a markdown file's anchors, or an error if it cannot
// be read.
func (c *linkChecker) fileAnchors(name string) (map[string]bool, error) {
	if a, ok := c.anchors[name]; ok {
		return a, nil
	}
	b, err := fs.ReadFile(c.fsys, name)
	if err != nil {
		return nil, err
	}
	a, _ := parseMarkdown(string(b))
	c.anchors[name] = a
	return a, nil
}

// check returns what is wrong with target, a link written in file from
// (relative to the tree's root), or "" if it reaches an existing file and,
// in a markdown file, an existing heading. External links are not
// followed: only links into this repository are checked.
func (c *linkChecker) check(from, target string) string {
	var file, anchor string
	switch {
	case strings.HasPrefix(target, repoURL):
		file, anchor, _ = strings.Cut(strings.TrimPrefix(target, repoURL), "#")
	case scheme.MatchString(target):
		return ""
	default:
		file, anchor, _ = strings.Cut(target, "#")
		if file == "" {
			file = from
		} else {
			file = path.Join(path.Dir(from), file)
		}
	}
	if !fs.ValidPath(file) {
		return fmt.Sprintf("%s leaves the repository", target)
	}
	if _, err := fs.Stat(c.fsys, file); err != nil {
		return fmt.Sprintf("%s: no file %s", target, file)
	}
	if anchor == "" {
		return ""
	}
	if !strings.HasSuffix(file, ".md") {
		return fmt.Sprintf("%s: an anchor into %s, which is not markdown: link the file", target, file)
	}
	anchors, err := c.fileAnchors(file)
	if err != nil {
		return fmt.Sprintf("%s: %v", target, err)
	}
	if !anchors[anchor] {
		return fmt.Sprintf("%s: no heading #%s in %s", target, anchor, file)
	}
	return ""
}

// checkMarkdown returns the dead links of the markdown files, each as
// "file:line: what is wrong".
func checkMarkdown(fsys fs.FS, files []string) []string {
	c := newLinkChecker(fsys)
	var dead []string
	for _, f := range files {
		b, err := fs.ReadFile(fsys, f)
		if err != nil {
			dead = append(dead, fmt.Sprintf("%s: %v", f, err))
			continue
		}
		_, links := parseMarkdown(string(b))
		for _, l := range links {
			if msg := c.check(f, l.target); msg != "" {
				dead = append(dead, fmt.Sprintf("%s:%d: %s", f, l.line, msg))
			}
		}
	}
	return dead
}

// unlinkedPages returns the docs/*.md pages that README.md does not link.
func unlinkedPages(fsys fs.FS) ([]string, error) {
	pages, err := fs.Glob(fsys, "docs/*.md")
	if err != nil {
		return nil, err
	}
	b, err := fs.ReadFile(fsys, "README.md")
	if err != nil {
		return nil, err
	}
	_, links := parseMarkdown(string(b))
	linked := map[string]bool{}
	for _, l := range links {
		file, _, _ := strings.Cut(l.target, "#")
		linked[path.Clean(file)] = true
	}
	var missing []string
	for _, p := range pages {
		if !linked[p] {
			missing = append(missing, p)
		}
	}
	return missing, nil
}

// docFiles are README.md and the docs/ pages, failing if there are none.
func docFiles(t *testing.T) []string {
	t.Helper()
	pages, err := fs.Glob(os.DirFS("."), "docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) == 0 {
		t.Fatal("no docs/*.md: the reference pages are missing")
	}
	return append([]string{"README.md"}, pages...)
}

func TestDocsLinksAreAlive(t *testing.T) {
	for _, d := range checkMarkdown(os.DirFS("."), docFiles(t)) {
		t.Error(d)
	}
}

func TestDocsEveryPageIsLinkedFromReadme(t *testing.T) {
	docFiles(t)
	missing, err := unlinkedPages(os.DirFS("."))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range missing {
		t.Errorf("%s is not linked from README.md: add it to README's map of docs/", p)
	}
}

func TestDocsReadmeIsAFrontDoor(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	const limit = 300 // issue 25: README at most 300 lines, the reference in docs/
	if n := strings.Count(string(b), "\n"); n > limit {
		t.Errorf("README.md has %d lines, more than %d: move reference material to docs/", n, limit)
	}
	if !strings.Contains(string(b), "make test ") {
		t.Error("README.md does not name `make test`, the test command CI (.ci/run) runs")
	}
}

// TestDocsDeployLinksAreAlive checks the links of the deploy files into this
// repository: every alert's runbook names a heading of a docs page.
func TestDocsDeployLinksAreAlive(t *testing.T) {
	c := newLinkChecker(os.DirFS("."))
	files := []string{"deploy/prometheus/rules.yml", "deploy/prometheus/rules_test.yml", "deploy/grafana/resync.json"}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, link := range repoLink.FindAllString(string(b), -1) {
			if msg := c.check(".", link); msg != "" {
				t.Errorf("%s: %s", f, msg)
			}
		}
	}
	rules, err := os.ReadFile("deploy/prometheus/rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	runbooks := regexp.MustCompile(`runbook: "`+regexp.QuoteMeta(repoURL)+`docs/[^"#]+\.md#[^"]+"`).FindAllString(string(rules), -1)
	if alerts := strings.Count(string(rules), "- alert:"); alerts == 0 || len(runbooks) != alerts {
		t.Errorf("rules.yml: %d runbook links into docs/ for %d alerts, want one per alert", len(runbooks), alerts)
	}
}

// TestDocsLinkCheckFindsDeadLinks shows the link check failing on made-up
// documents: a dead link is reported with its file and line.
func TestDocsLinkCheckFindsDeadLinks(t *testing.T) {
	tests := []struct {
		name     string
		doc      string   // README.md of the made-up tree
		dead     []string // substrings of the reports, in order; none: no report
		unlinked []string
	}{
		{name: "alive", doc: "# Top\n[a](docs/a.md) [b](docs/a.md#one-two) [c](#top) [d](https://example.com/x#y) ![i](img.svg)\n"},
		{name: "dead file", doc: "[a](docs/a.md)\nsee [gone](docs/gone.md)\n", dead: []string{"README.md:2: docs/gone.md: no file docs/gone.md"}},
		{name: "dead anchor in a page", doc: "[a](docs/a.md#three)\n", dead: []string{"no heading #three in docs/a.md"}},
		{name: "dead anchor in the same file", doc: "# Top\n[a](docs/a.md) [x](#bottom)\n", dead: []string{"README.md:2: #bottom: no heading #bottom in README.md"}},
		{name: "a heading in a code block is no anchor", doc: "```sh\n# CA\n```\n[a](docs/a.md) [x](#ca)\n", dead: []string{"no heading #ca"}},
		{name: "a link in code is no link", doc: "[a](docs/a.md) `[x](nope.md)`\n```\n[y](nope.md)\n```\n"},
		{name: "a repeated heading gets a suffix", doc: "# Run\n# Run\n[a](docs/a.md) [x](#run-1) [y](#run-2)\n", dead: []string{"no heading #run-2"}},
		{name: "an anchor into a file that is not markdown", doc: "[a](docs/a.md) [x](img.svg#z)\n", dead: []string{"not markdown"}},
		{name: "a link out of the tree", doc: "[a](docs/a.md) [x](../outside.md)\n", dead: []string{"leaves the repository"}},
		{name: "a page not linked from README", doc: "# Top\n", unlinked: []string{"docs/a.md"}},
		{name: "a repository URL is checked", doc: "[a](docs/a.md) [x](" + repoURL + "docs/a.md#nope)\n", dead: []string{"no heading #nope in docs/a.md"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fsys := fstest.MapFS{
				"README.md":   {Data: []byte(tt.doc)},
				"docs/a.md":   {Data: []byte("# A page\n\n## One, two\n\nback to [README](../README.md)\n")},
				"img.svg":     {Data: []byte("<svg/>")},
				"go.mod":      {Data: []byte("module x\n")},
				"docs/b.yaml": {Data: []byte("not a page\n")},
			}
			dead := checkMarkdown(fsys, []string{"README.md", "docs/a.md"})
			if len(dead) != len(tt.dead) {
				t.Fatalf("reports %q, want %d matching %q", dead, len(tt.dead), tt.dead)
			}
			for i, want := range tt.dead {
				if !strings.Contains(dead[i], want) {
					t.Errorf("report %q, want it to contain %q", dead[i], want)
				}
			}
			unlinked, err := unlinkedPages(fsys)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(unlinked, tt.unlinked) {
				t.Errorf("unlinked pages %q, want %q", unlinked, tt.unlinked)
			}
		})
	}
}

func TestDocsGithubAnchor(t *testing.T) {
	for h, want := range map[string]string{
		"Runbook: ResyncNoLeader":                         "runbook-resyncnoleader",
		"3. Users and roles: `resyncctl rbac apply`":      "3-users-and-roles-resyncctl-rbac-apply",
		"Agent API (package `github.com/resyncd/resync`)": "agent-api-package-githubcomresyncdresync",
		"The end-to-end scenario: `make e2e`":             "the-end-to-end-scenario-make-e2e",
		"etcd key layout":                                 "etcd-key-layout",
		"Größe_und Zeit":                                  "größe_und-zeit",
	} {
		if got := githubAnchor(h); got != want {
			t.Errorf("githubAnchor(%q) = %q, want %q", h, got, want)
		}
	}
}

// TestDocsPortingDiffMatchesPortingTest: README's porting diff is the
// diff of the flavor in porting_test.go. Its context lines appear there in
// order, and each added line appears there too (an assignment: its left
// side), so that the diff cannot drift from the tested flavor.
func TestDocsPortingDiffMatchesPortingTest(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	test, err := os.ReadFile("porting_test.go")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(readme), "```diff\n")
	if !ok {
		t.Fatal("README.md has no ```diff block: the porting diff is missing")
	}
	block, _, _ = strings.Cut(block, "```")
	var code []string
	for _, l := range strings.Split(string(test), "\n") {
		code = append(code, goLine(l))
	}
	at, checked := 0, 0
	for _, l := range strings.Split(block, "\n") {
		if l == "" || l[0] == '-' || goLine(l[1:]) == "" || goLine(l[1:]) == "..." {
			continue
		}
		want := goLine(l[1:])
		checked++
		if l[0] == '+' {
			lhs, _, isAssign := strings.Cut(want, " = ")
			if !slices.ContainsFunc(code, func(c string) bool {
				return c == want || isAssign && strings.HasPrefix(c, lhs+" = ")
			}) {
				t.Errorf("added line %q of README's porting diff is not in porting_test.go", want)
			}
			continue
		}
		i := slices.Index(code[at:], want)
		if i < 0 {
			t.Errorf("context line %q of README's porting diff is not in porting_test.go (after line %d)", want, at)
			continue
		}
		at += i + 1
	}
	if checked < 10 {
		t.Errorf("only %d lines of README's porting diff checked: is the extraction broken?", checked)
	}
}

// goLine is a line of Go without its comment and with its spaces collapsed.
func goLine(l string) string {
	if i := strings.Index(l, "//"); i >= 0 && !strings.Contains(l[:i], `"`) {
		l = l[:i]
	}
	return strings.Join(strings.Fields(l), " ")
}

// readmeExample is README's Go example ("A plugin in Go"), here so that
// it compiles against the API; TestDocsReadmeExampleIsCompiled checks that
// README shows exactly its body.
func readmeExample(log logrus.FieldLogger, etcdClient *clientv3.Client, reloadInterfaces func()) error {
	rs, err := resync.New(resync.Deps{Log: log, Client: etcdClient}, resync.DefaultConfig("agent-1"))
	if err != nil {
		return err
	}
	defer rs.Close()
	ch := rs.Register("ifplugin").StatusChan()
	for {
		select {
		case ev := <-ch:
			if ev.ResyncStatus() == resync.Started {
				reloadInterfaces() // the plugin's whole state
			}
			ev.Ack()
		case <-rs.Done(): // after Close, or when another process took the name
			return rs.Err()
		}
	}
}

func TestDocsReadmeExampleIsCompiled(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("docs_test.go")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(readme), "## A plugin in Go\n")
	if ok {
		_, block, ok = strings.Cut(block, "```go\n")
	}
	if !ok {
		t.Fatal("README.md has no ```go block under \"## A plugin in Go\"")
	}
	block, _, _ = strings.Cut(block, "```")
	_, body, _ := strings.Cut(string(src), "func readmeExample(")
	_, body, _ = strings.Cut(body, "{\n")
	body, _, _ = strings.Cut(body, "\n}\n")
	var want []string
	for _, l := range strings.Split(body, "\n") {
		want = append(want, strings.TrimPrefix(l, "\t"))
	}
	if got := strings.TrimSuffix(block, "\n"); got != strings.Join(want, "\n") {
		t.Errorf("README's Go example is not the body of readmeExample in docs_test.go:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}
