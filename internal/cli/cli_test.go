package cli

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
)

func flags() (*pflag.FlagSet, *string, *time.Duration, *bool) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	out := fs.StringP("output", "o", "text", "")
	d := fs.Duration("dial-timeout", time.Second, "")
	b := fs.Bool("wait", false, "")
	return fs, out, d, b
}

// TestNormalize: Go flag's single-dash long flags become double-dash ones;
// shorthands, values, unknown shorthands and what follows "--" stay.
func TestNormalize(t *testing.T) {
	fs, _, _, _ := flags()
	for _, tc := range []struct{ in, want []string }{
		{[]string{"-dial-timeout", "2s", "-wait"}, []string{"--dial-timeout", "2s", "--wait"}},
		{[]string{"-dial-timeout=2s", "-output=json"}, []string{"--dial-timeout=2s", "--output=json"}},
		{[]string{"-o", "json", "--wait"}, []string{"-o", "json", "--wait"}},
		{[]string{"-ojson"}, []string{"-ojson"}},
		{[]string{"-o", "-wait"}, []string{"-o", "-wait"}},                             // a value that looks like a flag
		{[]string{"--output", "-dial-timeout"}, []string{"--output", "-dial-timeout"}}, // idem
		{[]string{"-nope"}, []string{"--nope"}},                                        // unknown: pflag names --nope
		{[]string{"-wait", "--", "-wait"}, []string{"--wait", "--", "-wait"}},
		{[]string{"status", "-", "x"}, []string{"status", "-", "x"}},
	} {
		if got := Normalize(tc.in, Lookup(fs)); !slices.Equal(got, tc.want) {
			t.Errorf("Normalize(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestParse: single-dash long flags parse; the environment fills what the
// command line lacks and loses to it; errors name the flag or variable.
func TestParse(t *testing.T) {
	t.Setenv("RESYNC_OUTPUT", "json")
	t.Setenv("RESYNC_DIAL_TIMEOUT", "9s")
	fs, out, d, b := flags()
	if err := Parse(fs, "t", []string{"-dial-timeout", "2s", "-wait"}); err != nil {
		t.Fatal(err)
	}
	if *out != "json" || *d != 2*time.Second || !*b {
		t.Fatalf("output %q dial-timeout %v wait %v: want json (env), 2s (flag over env), true", *out, *d, *b)
	}
	if !fs.Changed("output") {
		t.Error("a flag set from the environment is not Changed")
	}
	for _, tc := range []struct {
		args []string
		env  string
		want string
	}{
		{[]string{"--nope"}, "", "unknown flag: --nope (run 't --help' for the flags)"},
		{[]string{"--dial-timeout", "soon"}, "", `invalid argument "soon" for "--dial-timeout" flag`},
		{[]string{"extra"}, "", `unexpected argument "extra"`},
		{nil, "soon", `environment variable RESYNC_DIAL_TIMEOUT="soon"`},
	} {
		t.Setenv("RESYNC_DIAL_TIMEOUT", tc.env)
		fs, _, _, _ := flags()
		if err := Parse(fs, "t", tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) with RESYNC_DIAL_TIMEOUT=%q: %v, want %q", tc.args, tc.env, err, tc.want)
		}
	}
	fs, _, _, _ = flags()
	if err := Parse(fs, "t", []string{"-h"}); !errors.Is(err, pflag.ErrHelp) {
		t.Errorf("-h: %v, want ErrHelp", err)
	}
}

func TestLogFlags(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	var l LogFlags
	l.Register(fs)
	if l.Level != "info" || l.Format != "text" {
		t.Fatalf("defaults %+v", l)
	}
	var buf bytes.Buffer
	log, err := (&LogFlags{Level: "warn", Format: "json"}).Logger(&buf)
	if err != nil || log.GetLevel() != logrus.WarnLevel {
		t.Fatalf("%v %v", log, err)
	}
	log.Warn("x")
	if !strings.HasPrefix(buf.String(), "{") {
		t.Errorf("json format wrote %q", buf.String())
	}
	if _, err := (&LogFlags{Level: "loud", Format: "text"}).Logger(&buf); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("bad level: %v", err)
	}
	if _, err := (&LogFlags{Level: "info", Format: "xml"}).Logger(&buf); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Errorf("bad format: %v", err)
	}
}
