package schema

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// encodedLen is the length of s's JSON encoding by encoding/json, quotes
// excluded: what Cut bounds.
func encodedLen(s string) int {
	b, _ := json.Marshal(s)
	return len(b) - 2
}

func TestCut(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		max  int
		want string // "" to check only the bound and the marker
	}{
		{"short", "short <", 100, "short <"},
		{"invalid UTF-8 replaced", "a\xffb", 10, "a\uFFFDb"},
		{"empty", "", 10, ""},
		{"at the limit", strings.Repeat("x", 10), 10, strings.Repeat("x", 10)},
		{"within the marker's slack", strings.Repeat("x", 10+len(CutMarker)), 10, strings.Repeat("x", 10+len(CutMarker))},
		{"bytes", strings.Repeat("x", 30), 10, strings.Repeat("x", 10) + CutMarker},
		{"on a rune boundary", strings.Repeat("é", 1000), MaxReasonLen, strings.Repeat("é", MaxReasonLen/2) + CutMarker},
		{"odd limit on a rune boundary", strings.Repeat("é", 20), 5, "éé" + CutMarker},
		{"escapes counted", strings.Repeat("<", 5000), MaxReasonLen, ""},
		{"quotes counted", strings.Repeat(`"`, 100), 10, ""},
		// As schema.TruncateJSON cut it before Cut: the size of a round
		// summary with its examples depends on it.
		{"some escapes", strings.Repeat("reload <failed> ", 64), MaxExampleErrorLen, strings.Repeat("reload <failed> ", 6) + CutMarker},
		{"mixed", strings.Repeat("reload <failed> \"x\"\n\t\x01\u2028 ", 200), MaxAckErrorLen, ""},
		{"example limit", strings.Repeat("&é", 400), MaxExampleErrorLen, ""},
		{"trimmed limit", strings.Repeat("a<", 400), MaxTrimmedErrorLen, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Cut(tc.in, tc.max)
			if tc.want != "" && got != tc.want {
				t.Fatalf("Cut = %q (%d bytes), want %q", got, len(got), tc.want)
			}
			if !utf8.ValidString(got) {
				t.Fatalf("Cut gave invalid UTF-8 %q", got)
			}
			if n := encodedLen(got); n > tc.max+len(CutMarker) {
				t.Fatalf("Cut left %d bytes after JSON escaping: the bound is %d", n, tc.max+len(CutMarker))
			}
			if encodedLen(tc.in) > tc.max+len(CutMarker) {
				prefix, ok := strings.CutSuffix(got, CutMarker)
				if !ok || encodedLen(prefix) > tc.max || !strings.HasPrefix(strings.ToValidUTF8(tc.in, "\uFFFD"), prefix) {
					t.Fatalf("Cut of a long text = %q: want a prefix within %d escaped bytes and the marker", got, tc.max)
				}
			}
			if again := Cut(got, tc.max); again != got {
				t.Fatalf("Cut is not idempotent: %q, then %q", got, again)
			}
			if err := checkText("text", got, acceptLen(tc.max)); err != nil {
				t.Fatalf("a decoder refuses a text Cut made: %v", err)
			}
		})
	}
}

// The leader cuts an ack's error (MaxAckErrorLen), then the same text for
// a record over budget (MaxTrimmedErrorLen) and for the examples
// (MaxExampleErrorLen): each cut from the longer one is a plain cut, never
// a marker inside a marker.
func TestCutOfACutText(t *testing.T) {
	ack := Cut(strings.Repeat("reload <failed> ", 200), MaxAckErrorLen)
	for _, max := range []int{MaxExampleErrorLen, MaxTrimmedErrorLen} {
		got := Cut(ack, max)
		if strings.Count(got, CutMarker) != 1 || !strings.HasSuffix(got, CutMarker) || encodedLen(got) > max+len(CutMarker) {
			t.Fatalf("Cut(%d) of a cut text = %q", max, got)
		}
	}
}

// jsonRuneLen agrees with encoding/json on every rune.
func TestJSONRuneLen(t *testing.T) {
	for r := rune(0); r <= utf8.MaxRune; r++ {
		if !utf8.ValidRune(r) || (r > 0x3000 && r%251 != 0) {
			continue
		}
		if got, want := jsonRuneLen(r), encodedLen(string(r)); got != want {
			t.Fatalf("jsonRuneLen(%U) = %d, encoding/json writes %d bytes", r, got, want)
		}
	}
}
