package schema

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// MaxNameLen is the longest agent or plugin name, in bytes.
const MaxNameLen = 128

// ErrInvalidName is wrapped by every error ValidateName returns.
var ErrInvalidName = errors.New("invalid name")

// ValidateName checks an agent or plugin name: 1 to MaxNameLen characters from
// [A-Za-z0-9._-], and not "." or "..". kind ("agent", "plugin") is only used
// in the error text. The error wraps ErrInvalidName and says what to change.
func ValidateName(kind, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: %s name is empty: use 1-%d characters from [A-Za-z0-9._-]", ErrInvalidName, kind, MaxNameLen)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %s name is %d bytes long: the limit is %d", ErrInvalidName, kind, len(name), MaxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("%w: %s name %q is reserved", ErrInvalidName, kind, name)
	}
	for i := 0; i < len(name); i++ {
		if !nameByte(name[i]) {
			r, _ := utf8.DecodeRuneInString(name[i:])
			return fmt.Errorf("%w: %s name %q has %q at byte %d: only [A-Za-z0-9._-] are allowed", ErrInvalidName, kind, name, r, i)
		}
	}
	return nil
}

func nameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}
