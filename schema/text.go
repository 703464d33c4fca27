package schema

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Limits on free text: reasons and error texts, which come from users and
// plugins and may be of any length. Each limit bounds a text's JSON
// encoding (quotes excluded), the form in which it is stored, before
// CutMarker. Whoever writes a text cuts it with Cut to the limit of the
// field it goes to; each text is cut once on its way, Cut leaving a text
// it already cut as it is.
const (
	// MaxReasonLen bounds a request's, a revision's and a round's reason.
	MaxReasonLen = 1024
	// MaxAckErrorLen bounds an ack's error text (cut by the agent's
	// watcher) and, as the leader copies it, a failed plugin's error text
	// in a per-agent round record (RoundAgent.Errors).
	MaxAckErrorLen = 1024
	// MaxTrimmedErrorLen bounds the error texts of a per-agent round
	// record that exceeds the leader's write budget with their full texts
	// (the record is then marked Truncated).
	MaxTrimmedErrorLen = 128
	// MaxExampleErrorLen bounds a failed participant's error text among a
	// round summary's examples (RoundExamples.Errors).
	MaxExampleErrorLen = 256
)

// CutMarker ends a text that Cut shortened.
const CutMarker = "...[truncated]"

// Cut bounds s for a text field whose limit is limit (MaxReasonLen and the
// other limits above): it makes s valid UTF-8 (replacing invalid bytes
// with U+FFFD); then, if the JSON encoding of s is longer than
// limit+len(CutMarker) bytes, it cuts s on a rune boundary and appends
// CutMarker. So the encoding of the result is at most limit+len(CutMarker)
// bytes, and Cut(Cut(s, limit), limit) == Cut(s, limit): a text that passes
// several hands is cut once.
//
// The length counts JSON escaping as encoding/json writes it ("<" becomes
// \u003c, six bytes), so that a text of quotes or angle brackets cannot
// make a record six times longer than its limit. The cut starts at limit
// bytes and moves back by the excess until the result fits: a text dense
// with escapes keeps fewer than limit bytes of encoding, never more.
func Cut(s string, limit int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	bound := limit + len(CutMarker)
	if jsonFits(s, bound) {
		return s
	}
	for cut := limit; ; {
		t := s
		if len(s) > cut {
			c := cut
			for c > 0 && !utf8.RuneStart(s[c]) {
				c--
			}
			t = s[:c] + CutMarker
		}
		n := jsonLen(t)
		if n <= bound || cut <= 0 {
			return t
		}
		cut = max(cut-(n-bound), 0)
	}
}

// jsonFits reports whether s's JSON encoding, quotes excluded, is at most
// limit bytes long; it reads s only that far.
func jsonFits(s string, limit int) bool {
	n := 0
	for _, r := range s {
		if n += jsonRuneLen(r); n > limit {
			return false
		}
	}
	return true
}

// jsonLen is the length of s's JSON encoding, quotes excluded.
func jsonLen(s string) int {
	n := 0
	for _, r := range s {
		n += jsonRuneLen(r)
	}
	return n
}

// jsonRuneLen is the length of r in a string encoded by encoding/json
// (json.Marshal, which escapes HTML characters): r is valid (Cut replaced
// invalid bytes first).
func jsonRuneLen(r rune) int {
	switch {
	case r == '"' || r == '\\' || r == '\b' || r == '\f' || r == '\n' || r == '\r' || r == '\t':
		return 2
	case r < 0x20 || r == '<' || r == '>' || r == '&' || r == '\u2028' || r == '\u2029':
		return 6
	}
	return utf8.RuneLen(r)
}

// acceptLen is the length in bytes that a decoder accepts for a text cut
// to limit: the limit and CutMarker, plus 20 bytes of slack that every
// version has allowed (records written by earlier writers stay valid).
// The length is counted in bytes, not after escaping, so that an ack from
// a writer that cut in bytes is not refused.
func acceptLen(limit int) int { return limit + len(CutMarker) + 20 }

// checkText checks one text against limit and the following name/value pairs
// against MaxIDLen; all must be valid UTF-8.
func checkText(name, text string, limit int, ids ...string) error {
	if len(text) > limit {
		return fmt.Errorf("%s is %d bytes long: the limit is %d", name, len(text), limit)
	}
	if !utf8.ValidString(text) {
		return fmt.Errorf("%s is not valid UTF-8", name)
	}
	for i := 0; i+1 < len(ids); i += 2 {
		if len(ids[i+1]) > MaxIDLen {
			return fmt.Errorf("%s is %d bytes long: the limit is %d", ids[i], len(ids[i+1]), MaxIDLen)
		}
		if !utf8.ValidString(ids[i+1]) {
			return fmt.Errorf("%s is not valid UTF-8", ids[i])
		}
	}
	return nil
}
