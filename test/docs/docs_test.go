// Package docs tests the project's documentation: every relative link in
// README.md, docs/, examples/ and bench/ resolves, anchors included, and no
// document points outside the repository. It also checks `make install`,
// which the README's "Running it yourself" starts with.
package docs

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// repoRoot is two levels up from test/docs.
const repoRoot = "../.."

// mdLink matches [text](target) and ![alt](target); target stops at a
// space (a "title") or the closing parenthesis.
var mdLink = regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)

// codePath matches a relative path in backticks that climbs out: `../x`.
var codePath = regexp.MustCompile("`(\\.\\./[^`\\s]+)`")

// knownOutside lists references outside the repository that are allowed
// for now, by document (none today). An entry that no longer matches fails
// the test, so it is deleted with the fix.
func knownOutside() map[string]string {
	return map[string]string{}
}

// documents lists the Markdown files checked, relative to the root.
func documents(t *testing.T) []string {
	t.Helper()
	docs := []string{"README.md"}
	for _, pattern := range []string{"docs/*.md", "examples/*.md", "examples/*/*.md", "bench/*.md"} {
		m, err := filepath.Glob(filepath.Join(repoRoot, pattern))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range m {
			rel, _ := filepath.Rel(repoRoot, p)
			docs = append(docs, rel)
		}
	}
	if len(docs) < 4 {
		t.Fatalf("found only %v", docs)
	}
	return docs
}

type link struct {
	line   int
	target string
}

// links reads the Markdown links of a file, outside fenced code blocks.
func links(t *testing.T, doc string) (out []link, outside []link) {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, doc))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	fenced := false
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		for _, m := range mdLink.FindAllStringSubmatch(line, -1) {
			out = append(out, link{n, m[1]})
		}
		for _, m := range codePath.FindAllStringSubmatch(line, -1) {
			outside = append(outside, link{n, m[1]})
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out, outside
}

// external reports a link this test does not resolve: a URL or a mail.
func external(target string) bool {
	return strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:")
}

// TestRelativeLinksResolve: every relative link names a file or directory
// of the repository, and every #anchor a heading of its target.
func TestRelativeLinksResolve(t *testing.T) {
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, doc := range documents(t) {
		ls, _ := links(t, doc)
		for _, l := range ls {
			if external(l.target) {
				continue
			}
			checked++
			if problem := resolve(root, doc, l.target); problem != "" {
				t.Errorf("%s:%d: link %q: %s", doc, l.line, l.target, problem)
			}
		}
	}
	if checked < 5 {
		t.Errorf("checked only %d links: is the link pattern broken?", checked)
	}
}

// resolve checks one link of doc; it returns what is wrong, or "".
func resolve(root, doc, target string) string {
	path, anchor, _ := strings.Cut(target, "#")
	file := filepath.Join(root, doc)
	if path != "" {
		if filepath.IsAbs(path) {
			return "absolute path: use a path relative to " + doc
		}
		file = filepath.Join(root, filepath.Dir(doc), path)
		if rel, err := filepath.Rel(root, file); err != nil || strings.HasPrefix(rel, "..") {
			return "points outside the repository"
		}
		if _, err := os.Stat(file); err != nil {
			return "no such file in the repository"
		}
	}
	if anchor == "" || !strings.HasSuffix(file, ".md") {
		return ""
	}
	anchors, err := headingAnchors(file)
	if err != nil {
		return err.Error()
	}
	if !anchors[anchor] {
		return fmt.Sprintf("no heading with anchor #%s in %s", anchor, filepath.Base(file))
	}
	return ""
}

// headingAnchors returns the GitHub anchors of a Markdown file's headings:
// lower case, punctuation dropped, spaces as hyphens.
func headingAnchors(file string) (map[string]bool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	anchors := map[string]bool{}
	fenced := false
	for line := range strings.Lines(string(data)) {
		line = strings.TrimRight(line, "\n")
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
		}
		if fenced || !strings.HasPrefix(line, "#") {
			continue
		}
		anchors[slug(strings.TrimLeft(line, "# "))] = true
	}
	return anchors, nil
}

func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || ('a' <= r && r <= 'z') || ('0' <= r && r <= '9') || r > 127:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestDocsStayInRepository: no document refers to a path outside the
// repository (a reader of a clone has only the clone), in a link or in a
// `../path` in backticks.
func TestDocsStayInRepository(t *testing.T) {
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	known := knownOutside()
	for _, doc := range documents(t) {
		_, refs := links(t, doc)
		for _, r := range refs {
			// Inside means: the path, read from the document, is a file of
			// the repository. `../shared/DESIGN.md` in docs/ is neither
			// docs/../shared (absent) nor anything a clone holds.
			p := filepath.Join(root, filepath.Dir(doc), r.target)
			if rel, err := filepath.Rel(root, p); err == nil && !strings.HasPrefix(rel, "..") {
				if _, err := os.Stat(p); err == nil {
					continue
				}
			}
			if known[doc] == r.target {
				delete(known, doc)
				t.Logf("%s:%d: %q points outside the repository (known; for the lead to remove)", doc, r.line, r.target)
				continue
			}
			t.Errorf("%s:%d: %q points outside the repository", doc, r.line, r.target)
		}
	}
	for doc, target := range known {
		t.Errorf("knownOutside: %s no longer refers to %q: delete the entry", doc, target)
	}
}

// TestLinkCheckCatchesBrokenLinks: the checks above can fail.
func TestLinkCheckCatchesBrokenLinks(t *testing.T) {
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string]string{
		"docs/nope.md":               "no such file",
		"../../../etc/passwd":        "outside the repository",
		"docs/operations.md#nowhere": "no heading with anchor #nowhere",
		"/etc/passwd":                "absolute path",
	} {
		if got := resolve(root, "README.md", target); !strings.Contains(got, want) {
			t.Errorf("resolve(%q) = %q; want %q", target, got, want)
		}
	}
	for _, ok := range []string{"docs/operations.md", "docs/configuration.md#service", "#running-it-yourself", "examples/"} {
		if got := resolve(root, "README.md", ok); got != "" {
			t.Errorf("resolve(%q) = %q; want it to resolve", ok, got)
		}
	}
	if got := mdLink.FindAllStringSubmatch(`see [a](x.md) and ![b](y.png "t") [c](http://e)`, -1); len(got) != 3 || got[1][1] != "y.png" {
		t.Errorf("link pattern: %q", got)
	}
}

// TestMakeInstall: `make install` puts trellis in $(go env GOPATH)/bin, or
// PREFIX/bin, as the README says (dry run: nothing is built).
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		t.Fatal(err)
	}
	for prefix, want := range map[string]string{
		"":           filepath.Join(strings.TrimSpace(string(gopath)), "bin", "trellis"),
		"/usr/local": "/usr/local/bin/trellis",
	} {
		args := []string{"-n", "-C", repoRoot, "install"}
		if prefix != "" {
			args = append(args, "PREFIX="+prefix)
		}
		out, err := exec.Command("make", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("make %v: %v\n%s", args, err, out)
		}
		if !strings.Contains(string(out), "install -m 0755 bin/trellis "+want) {
			t.Errorf("make install PREFIX=%q does not install to %s:\n%s", prefix, want, out)
		}
	}
}
