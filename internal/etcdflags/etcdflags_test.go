package etcdflags

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/goleak"

	"github.com/resyncd/resync/internal/cli"
	"github.com/resyncd/resync/internal/testing/etcdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.LeakOptions()...) }

func parse(t *testing.T, args []string, env map[string]string) (Flags, error) {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := Default()
	f.Register(fs)
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	return f, cli.ApplyEnv(fs, lookup)
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

// A TLS mismatch or a refused certificate is not "is etcd running?": the
// error says what is wrong with TLS.
func TestDialExplainsTLSFailures(t *testing.T) {
	pki := etcdtest.NewPKI(t)
	m := etcdtest.StartTLS(t, pki, true)
	plain := etcdtest.Start(t)
	cert, key := pki.Client("ok")
	other := etcdtest.NewPKI(t)
	badCert, badKey := other.Client("intruder")
	for _, tc := range []struct {
		name string
		f    Flags
		want string
	}{
		{"no client certificate", Flags{Endpoints: m.Endpoint(), CACert: pki.CAFile}, "remote error: tls: certificate required (no client certificate given: set --cert and --key)"},
		{"untrusted client certificate", Flags{Endpoints: m.Endpoint(), CACert: pki.CAFile, Cert: badCert, Key: badKey}, "TLS: the server refused the connection"},
		{"unknown server CA", Flags{Endpoints: m.Endpoint(), CACert: other.CAFile, Cert: cert, Key: key}, "x509: certificate signed by unknown authority"},
		{"plain client", Flags{Endpoints: m.Endpoint()}, "the server speaks TLS: use an https:// endpoint"},
		{"TLS client, plain server", Flags{Endpoints: plain.Endpoint(), CACert: pki.CAFile}, "it may not speak TLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.f.DialTimeout, tc.f.CommandTimeout = time.Second, time.Second
			c, err := tc.f.Dial(context.Background())
			if c != nil {
				c.Close()
				t.Fatal("connected")
			}
			if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want unreachable and %q", err, tc.want)
			}
		})
	}
	// The right certificate connects.
	f := Flags{Endpoints: m.Endpoint(), CACert: pki.CAFile, Cert: cert, Key: key, DialTimeout: 5 * time.Second, CommandTimeout: time.Second}
	c, err := f.Dial(context.Background())
	if err != nil {
		t.Fatalf("with the right certificate: %v", err)
	}
	c.Close()
}
