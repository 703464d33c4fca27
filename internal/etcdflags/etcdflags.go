package etcdflags

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/resyncd/resync/internal/dialopt"
)

// Defaults, as etcdctl has them (except the command timeout: etcdctl's is 5s).
const (
	DefaultEndpoints      = "127.0.0.1:2379"
	DefaultDialTimeout    = 5 * time.Second
	DefaultCommandTimeout = 10 * time.Second
)

// ErrUnreachable is matched (errors.Is) by the *UnreachableError that Dial
// returns when no endpoint answered within the dial timeout.
var ErrUnreachable = errors.New("etcdflags: etcd unreachable")

// ErrAuthDisabled is matched (errors.Is) by the error Dial returns when
// credentials were given but etcd has authentication disabled.
var ErrAuthDisabled = errors.New("etcdflags: authentication disabled")

// sentinelError is a message that matches a sentinel with errors.Is.
type sentinelError struct {
	msg string
	is  error
}

func (e *sentinelError) Error() string        { return e.msg }
func (e *sentinelError) Is(target error) bool { return target == e.is }

// Flags are the connection settings. Build one with Default, then Register
// it on a pflag FlagSet (or fill it by hand).
type Flags struct {
	// Endpoints is the comma-separated list of host:port (or
	// http(s)://host:port) client URLs.
	Endpoints string
	// DialTimeout bounds connecting and the probe of Dial.
	DialTimeout time.Duration
	// CommandTimeout bounds each request after the probe; callers apply it
	// with CommandContext.
	CommandTimeout time.Duration
	// CACert is a PEM bundle of CAs that verify the server.
	CACert string
	// Cert and Key are the PEM client certificate and key (both or neither).
	Cert, Key string
	// User is a user name, or "user:password".
	User string
	// Password is the user's password.
	Password string
}

// Default returns the defaults listed in the package doc.
func Default() Flags {
	return Flags{Endpoints: DefaultEndpoints, DialTimeout: DefaultDialTimeout, CommandTimeout: DefaultCommandTimeout}
}

// Register defines the connection flags on fs, bound to f's fields; f's
// current values are the flags' defaults.
func (f *Flags) Register(fs *pflag.FlagSet) {
	fs.StringVar(&f.Endpoints, "endpoints", f.Endpoints, "comma-separated etcd client endpoints (host:port or http(s)://host:port)")
	fs.DurationVar(&f.DialTimeout, "dial-timeout", f.DialTimeout, "how long to try to reach etcd before giving up")
	fs.DurationVar(&f.CommandTimeout, "command-timeout", f.CommandTimeout, "bound of each etcd request")
	fs.StringVar(&f.CACert, "cacert", f.CACert, "verify the etcd server with this CA bundle (PEM); turns TLS on")
	fs.StringVar(&f.Cert, "cert", f.Cert, "client TLS certificate (PEM), with --key")
	fs.StringVar(&f.Key, "key", f.Key, "client TLS key (PEM), with --cert")
	fs.StringVar(&f.User, "user", f.User, "etcd user name, or user:password")
	fs.StringVar(&f.Password, "password", f.Password, "etcd password (prefer the environment variable)")
}

// EndpointList is Endpoints split on commas, blanks dropped.
func (f *Flags) EndpointList() []string {
	var eps []string
	for _, e := range strings.Split(f.Endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	return eps
}

// Validate checks the settings without touching the network or files.
func (f *Flags) Validate() error {
	switch {
	case len(f.EndpointList()) == 0:
		return errors.New("--endpoints is empty: give at least one host:port")
	case f.DialTimeout <= 0:
		return fmt.Errorf("--dial-timeout %v must be positive", f.DialTimeout)
	case f.CommandTimeout <= 0:
		return fmt.Errorf("--command-timeout %v must be positive", f.CommandTimeout)
	case (f.Cert == "") != (f.Key == ""):
		return errors.New("--cert and --key go together: give both or neither")
	}
	if user, pass := f.credentials(); pass != "" && user == "" {
		return errors.New("--password needs --user")
	}
	return nil
}

// credentials splits "user:password" when no separate password is given.
func (f *Flags) credentials() (user, password string) {
	user, password = f.User, f.Password
	if password == "" {
		if u, p, ok := strings.Cut(user, ":"); ok {
			user, password = u, p
		}
	}
	return user, password
}

// TLS reports whether the settings ask for TLS: a --cacert, --cert or
// --key, or an https:// endpoint.
func (f *Flags) TLS() bool {
	if f.CACert != "" || f.Cert != "" || f.Key != "" {
		return true
	}
	for _, e := range f.EndpointList() {
		if strings.HasPrefix(e, "https://") {
			return true
		}
	}
	return false
}

// Config builds the clientv3 configuration: endpoints, dial timeout,
// credentials, TLS (from the PEM files; system roots when only an https://
// endpoint asks for TLS) and a no-op zap logger, so that the client never
// writes to the terminal. It reads the PEM files.
func (f *Flags) Config() (clientv3.Config, error) {
	if err := f.Validate(); err != nil {
		return clientv3.Config{}, err
	}
	user, pass := f.credentials()
	cfg := clientv3.Config{
		Endpoints:            f.EndpointList(),
		DialTimeout:          f.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: f.DialTimeout,
		Username:             user,
		Password:             pass,
		Logger:               zap.NewNop(),
		DialOptions:          []grpc.DialOption{dialopt.Reconnect()},
	}
	if f.TLS() {
		var tc *tls.Config
		if f.CACert != "" || f.Cert != "" {
			info := transport.TLSInfo{CertFile: f.Cert, KeyFile: f.Key, TrustedCAFile: f.CACert}
			var err error
			if tc, err = info.ClientConfig(); err != nil {
				return clientv3.Config{}, fmt.Errorf("TLS settings (--cacert %q, --cert %q, --key %q): %w", f.CACert, f.Cert, f.Key, err)
			}
		} else {
			tc = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		cfg.TLS = tc
	}
	return cfg, nil
}

// UnreachableError says that no endpoint answered within the dial timeout.
type UnreachableError struct {
	Endpoints   []string
	DialTimeout time.Duration
	// Err is the last error of the attempt (for logs; not in the text).
	Err error
	// TLS, when not empty, says why an endpoint that accepts connections
	// still did not answer: a TLS mismatch or a refused certificate. It
	// replaces the hint about resyncd not running.
	TLS string
}

func (e *UnreachableError) Error() string {
	if e.TLS != "" {
		return fmt.Sprintf("cannot reach etcd at %s within %v (dial timeout): %s",
			strings.Join(e.Endpoints, ","), e.DialTimeout, e.TLS)
	}
	return fmt.Sprintf("cannot reach etcd at %s within %v (dial timeout): is resyncd or etcd running? set --endpoints",
		strings.Join(e.Endpoints, ","), e.DialTimeout)
}

// Unwrap returns the underlying error.
func (e *UnreachableError) Unwrap() error { return e.Err }

// Is matches ErrUnreachable.
func (e *UnreachableError) Is(target error) bool { return target == ErrUnreachable }

// probeKey is read by Dial, as etcdctl's endpoint health reads it.
const probeKey = "health"

// Dial builds a client from the settings and proves that etcd answers: one
// serializable read, bounded by the dial timeout (and ctx). It returns a
// connected client that the caller closes, or an error and no client:
//   - *UnreachableError (errors.Is ErrUnreachable) when no endpoint answered
//     in time;
//   - an error naming the user when etcd rejected the credentials;
//   - an error matching ErrAuthDisabled when credentials were given but
//     etcd has authentication disabled;
//   - ctx's error when ctx ended first;
//   - the settings' error for bad flags or unreadable TLS files.
//
// A permission error on the probe counts as reachable: the user may lack
// read access to the probe key.
func (f *Flags) Dial(ctx context.Context) (*clientv3.Client, error) {
	cfg, err := f.Config()
	if err != nil {
		return nil, err
	}
	cfg.Context = ctx
	unreachable := func(err error) error {
		return &UnreachableError{Endpoints: cfg.Endpoints, DialTimeout: cfg.DialTimeout, Err: err, TLS: diagnoseTLS(ctx, cfg)}
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		// With credentials, New authenticates within the dial timeout.
		return nil, f.classify(ctx, err, unreachable)
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	_, err = c.Get(pctx, probeKey, clientv3.WithSerializable(), clientv3.WithCountOnly())
	cancel()
	if err == nil || errors.Is(err, rpctypes.ErrPermissionDenied) {
		return c, nil
	}
	c.Close()
	return nil, f.classify(ctx, err, unreachable)
}

func (f *Flags) classify(ctx context.Context, err error, unreachable func(error) error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	user, _ := f.credentials()
	switch {
	case errors.Is(err, rpctypes.ErrAuthFailed), errors.Is(err, rpctypes.ErrInvalidAuthToken), errors.Is(err, rpctypes.ErrInvalidAuthMgmt):
		return fmt.Errorf("etcd at %s rejected the credentials of user %q: %v", f.Endpoints, user, err)
	case errors.Is(err, rpctypes.ErrUserEmpty):
		return fmt.Errorf("etcd at %s requires authentication: set --user and --password, or a client certificate whose CN is an etcd user", f.Endpoints)
	case errors.Is(err, rpctypes.ErrAuthNotEnabled):
		return &sentinelError{fmt.Sprintf("etcd at %s has authentication disabled: drop --user/--password", f.Endpoints), ErrAuthDisabled}
	case errors.Is(err, context.DeadlineExceeded):
		return unreachable(err)
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return unreachable(err)
	}
	return fmt.Errorf("etcd at %s: %v", f.Endpoints, err)
}

// CommandContext returns ctx bounded by the command timeout.
func (f *Flags) CommandContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, f.CommandTimeout)
}
