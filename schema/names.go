package schema

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Names of agents and plugins.
//
// A name is whatever cn-infra accepts as a resync name: real agents register
// "K8s resources" and "Config VPP default plug:IF/L2/L3". It is any
// non-empty valid UTF-8 string of at most MaxNameLen bytes without control
// characters (ValidateName). Records carry the real name; keys carry its
// escaped form (EscapeName), in which the bytes [A-Za-z0-9._-] stand for
// themselves and every other byte is %XX (upper-case hex), so that a name
// made only of those bytes (every name before escaping existed) keeps its
// key, an escaped name never contains "/", and etcdctl shows readable ASCII.
// The names "." and ".." are escaped whole (%2E, %2E%2E) so that no key has
// a "." or ".." path element. UnescapeName accepts only the canonical form,
// so one name has exactly one key and one key one name.

// MaxNameLen is the longest agent or plugin name, in bytes of UTF-8 (the
// real name, not its escaped form, which is at most 3 x as long).
const MaxNameLen = 128

// ErrInvalidName is wrapped by every error ValidateName, ValidateToken and
// UnescapeName return.
var ErrInvalidName = errors.New("invalid name")

// ValidateName checks an agent or plugin name: non-empty, valid UTF-8, at
// most MaxNameLen bytes, no control characters. kind ("agent", "plugin") is
// only used in the error text. The error wraps ErrInvalidName and names the
// rule broken.
func ValidateName(kind, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: %s name is empty: give a name of 1-%d bytes", ErrInvalidName, kind, MaxNameLen)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %s name is %d bytes long: the limit is %d bytes of UTF-8", ErrInvalidName, kind, len(name), MaxNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: %s name %q is not valid UTF-8", ErrInvalidName, kind, name)
	}
	for i, r := range name {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: %s name %q has the control character %U at byte %d: names may not contain control characters", ErrInvalidName, kind, name, r, i)
		}
	}
	return nil
}

// ValidateToken checks an identifier that resync makes or that names an
// etcd user or a coordinator: 1 to MaxNameLen bytes from [A-Za-z0-9._-],
// and not "." or "..". Agent and plugin names are checked by ValidateName.
func ValidateToken(kind, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: %s is empty: use 1-%d characters from [A-Za-z0-9._-]", ErrInvalidName, kind, MaxNameLen)
	case len(s) > MaxNameLen:
		return fmt.Errorf("%w: %s is %d bytes long: the limit is %d", ErrInvalidName, kind, len(s), MaxNameLen)
	case s == "." || s == "..":
		return fmt.Errorf("%w: %s %q is reserved", ErrInvalidName, kind, s)
	}
	for i := 0; i < len(s); i++ {
		if !verbatim(s[i]) {
			r, _ := utf8.DecodeRuneInString(s[i:])
			return fmt.Errorf("%w: %s %q has %q at byte %d: only [A-Za-z0-9._-] are allowed", ErrInvalidName, kind, s, r, i)
		}
	}
	return nil
}

// verbatim reports whether c stands for itself in an escaped name.
func verbatim(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

const upperHex = "0123456789ABCDEF"

// EscapeName is name's form in keys: [A-Za-z0-9._-] verbatim, every other
// byte %XX, and "." and ".." escaped whole. It never contains "/". It does
// not validate name: key builders take names already checked.
func EscapeName(name string) string {
	if name == "." || name == ".." {
		return strings.Repeat("%2E", len(name))
	}
	n := 0
	for i := 0; i < len(name); i++ {
		if !verbatim(name[i]) {
			n++
		}
	}
	if n == 0 {
		return name
	}
	b := make([]byte, 0, len(name)+2*n)
	for i := 0; i < len(name); i++ {
		c := name[i]
		if verbatim(c) {
			b = append(b, c)
			continue
		}
		b = append(b, '%', upperHex[c>>4], upperHex[c&15])
	}
	return string(b)
}

// UnescapeName is the inverse of EscapeName: it returns the name kind
// (for the error text) whose escaped form is s, and an error wrapping
// ErrInvalidName when s is not the canonical escaped form of a valid name
// (a byte that must be escaped, lower-case hex, an escape of a byte that
// stands for itself, a truncated %, or a name ValidateName refuses).
func UnescapeName(kind, s string) (string, error) {
	switch s {
	case "%2E":
		return ".", nil
	case "%2E%2E":
		return "..", nil
	case ".", "..":
		return "", fmt.Errorf("%w: %s key element %q must be escaped (%s)", ErrInvalidName, kind, s, EscapeName(s))
	}
	if !strings.Contains(s, "%") {
		if err := checkVerbatim(kind, s); err != nil {
			return "", err
		}
		if err := ValidateName(kind, s); err != nil {
			return "", err
		}
		return s, nil
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			if !verbatim(c) {
				return "", fmt.Errorf("%w: %s key element %q has the unescaped byte %q at %d", ErrInvalidName, kind, s, c, i)
			}
			b = append(b, c)
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("%w: %s key element %q has a truncated escape at %d", ErrInvalidName, kind, s, i)
		}
		hi, lo := unhex(s[i+1]), unhex(s[i+2])
		if hi < 0 || lo < 0 {
			return "", fmt.Errorf("%w: %s key element %q has %q at %d: escapes are %%XX in upper-case hex", ErrInvalidName, kind, s, s[i:i+3], i)
		}
		d := byte(hi<<4 | lo)
		if verbatim(d) {
			return "", fmt.Errorf("%w: %s key element %q escapes %q at %d, which stands for itself", ErrInvalidName, kind, s, d, i)
		}
		b = append(b, d)
		i += 2
	}
	name := string(b)
	if err := ValidateName(kind, name); err != nil {
		return "", err
	}
	return name, nil
}

func checkVerbatim(kind, s string) error {
	for i := 0; i < len(s); i++ {
		if !verbatim(s[i]) {
			return fmt.Errorf("%w: %s key element %q has the unescaped byte %q at %d", ErrInvalidName, kind, s, s[i], i)
		}
	}
	return nil
}

// unhex is the value of an upper-case hex digit, -1 for anything else.
func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
