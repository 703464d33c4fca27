package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
)

// TestCompletionBash: `completion bash` prints a script that bash parses
// and that completes every command; `help` lists completion.
func TestCompletionBash(t *testing.T) {
	code, out, errOut := cli(t, context.Background(), "completion", "bash")
	if code != 0 || errOut != "" {
		t.Fatalf("completion bash: exit %d, stderr %q", code, errOut)
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	check := exec.Command(bash, "-n")
	check.Stdin = strings.NewReader(out)
	if b, err := check.CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, b)
	}
	for _, c := range commands() {
		name := c.name
		if _, sub, ok := strings.Cut(name, " "); ok {
			name = sub
		}
		if !strings.Contains(out, `commands+=("`+name+`")`) {
			t.Errorf("the script does not complete command %q", name)
		}
	}
	for _, f := range []string{"--endpoints", "--reason", "--output"} {
		if !strings.Contains(out, f) {
			t.Errorf("the script does not complete flag %s", f)
		}
	}
	if _, out, _ := cli(t, context.Background(), "help"); !strings.Contains(out, "completion") {
		t.Errorf("help does not list completion:\n%s", out)
	}
}
