package etcdflags

import (
	"context"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/resyncd/resync/internal/etcdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.LeakOptions()...) }

func parse(t *testing.T, args []string, env map[string]string) (Flags, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := Default()
	f.Register(fs)
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	return f, ApplyEnv(fs, "RESYNC_", lookup, Visited(fs))
}

func TestFlagsEnvAndDefaults(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want func(Flags) bool
		err  string
	}{
		{name: "defaults", want: func(f Flags) bool {
			return f.Endpoints == DefaultEndpoints && f.DialTimeout == DefaultDialTimeout && f.CommandTimeout == DefaultCommandTimeout
		}},
		{name: "env fills what the command line lacks",
			args: []string{"--dial-timeout", "2s"},
			env:  map[string]string{"RESYNC_ENDPOINTS": "a:1,b:2", "RESYNC_DIAL_TIMEOUT": "9s", "RESYNC_COMMAND_TIMEOUT": "3s"},
			want: func(f Flags) bool {
				return f.Endpoints == "a:1,b:2" && f.DialTimeout == 2*time.Second && f.CommandTimeout == 3*time.Second
			}},
		{name: "bad env value names the variable", env: map[string]string{"RESYNC_DIAL_TIMEOUT": "soon"}, err: "RESYNC_DIAL_TIMEOUT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parse(t, tc.args, tc.env)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || !tc.want(f) {
				t.Fatalf("flags %+v, err %v", f, err)
			}
		})
	}
}

func TestValidateAndConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    Flags
		err  string
	}{
		{"no endpoints", Flags{Endpoints: " , ", DialTimeout: time.Second, CommandTimeout: time.Second}, "--endpoints is empty"},
		{"cert without key", Flags{Endpoints: "a:1", DialTimeout: time.Second, CommandTimeout: time.Second, Cert: "c.pem"}, "--cert and --key"},
		{"zero dial timeout", Flags{Endpoints: "a:1", CommandTimeout: time.Second}, "--dial-timeout"},
		{"password without user", Flags{Endpoints: "a:1", DialTimeout: time.Second, CommandTimeout: time.Second, Password: "x"}, "--password needs --user"},
		{"missing CA file", Flags{Endpoints: "a:1", DialTimeout: time.Second, CommandTimeout: time.Second, CACert: "/nonexistent/ca.pem"}, "TLS settings"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.f.Config(); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Config() err = %v, want %q", err, tc.err)
			}
		})
	}
	f := Default()
	f.Endpoints, f.User = "https://e1:2379, e2:2379", "root:secret"
	cfg, err := f.Config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Username != "root" || cfg.Password != "secret" || cfg.TLS == nil || len(cfg.Endpoints) != 2 || cfg.Logger == nil {
		t.Fatalf("config %+v", cfg)
	}
}

func TestDial(t *testing.T) {
	m := etcdtest.Start(t)
	f := Default()
	f.Endpoints = m.Endpoint()
	c, err := f.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	f.Endpoints, f.DialTimeout = etcdtest.FreeAddr(t), time.Second
	start := time.Now()
	c, err = f.Dial(context.Background())
	took := time.Since(start)
	if c != nil || !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Dial of a closed port = %v, %v; want ErrUnreachable", c, err)
	}
	if took > 4*time.Second {
		t.Errorf("Dial took %v with a 1s dial timeout", took)
	}
	want := "cannot reach etcd at " + f.Endpoints + " within 1s (dial timeout)"
	if !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
		t.Errorf("error %q, want one line with %q", err, want)
	}
}
