package main

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/sirupsen/logrus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// etcdLog routes the embedded etcd's zap logs (warnings and above) into
// logrus, with etcd's fields as logrus fields. It knows three kinds of
// messages that are not warnings for resyncd's user:
//
//   - start-up notes about the embedded etcd's single-machine setup, which a
//     user of the embedded etcd cannot act on: logged once at info, with
//     what to do in production (see notes);
//   - the listeners' "server closed" / "use of closed network connection"
//     errors that etcd logs while it stops: after closing is called they are
//     debug;
//   - everything else keeps its level.
type etcdLog struct {
	l       logrus.FieldLogger
	fields  []zapcore.Field
	closing *atomic.Bool
	noted   *sync.Map // note message -> struct{}
}

// etcdNotes are start-up warnings of the embedded etcd that are about its
// single-machine setup, each with what the user should do in production.
var etcdNotes = map[string]string{
	"Running http and grpc server on single port. This is not recommended for production.": "the embedded etcd serves gRPC and HTTP on its one client port; " +
		"for production run an etcd cluster (its own --listen-client-http-urls if you need its HTTP API) and point resyncd at it with --endpoints",
	"simple token is not cryptographically signed": "the embedded etcd issues simple auth tokens (used only if etcd auth is enabled); " +
		"for production with etcd auth, run an etcd cluster with --auth-token jwt and point resyncd at it with --endpoints",
}

func newEtcdLog(l logrus.FieldLogger) *etcdLog {
	return &etcdLog{l: l, closing: &atomic.Bool{}, noted: &sync.Map{}}
}

// Logger is the zap logger to give the embedded etcd.
func (c *etcdLog) Logger() *zap.Logger { return zap.New(c) }

// Closing says that the embedded etcd is being stopped on purpose.
func (c *etcdLog) Closing() { c.closing.Store(true) }

// Enabled implements zapcore.Core.
func (c *etcdLog) Enabled(lv zapcore.Level) bool { return lv >= zapcore.WarnLevel }

// With implements zapcore.Core.
func (c *etcdLog) With(fs []zapcore.Field) zapcore.Core {
	n := *c
	n.fields = append(append([]zapcore.Field(nil), c.fields...), fs...)
	return &n
}

// Check implements zapcore.Core.
func (c *etcdLog) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

// Sync implements zapcore.Core.
func (c *etcdLog) Sync() error { return nil }

// Write implements zapcore.Core.
func (c *etcdLog) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	l := c.l
	for k, v := range enc.Fields {
		l = l.WithField(k, fmt.Sprint(v))
	}
	if note, ok := etcdNotes[e.Message]; ok {
		if _, dup := c.noted.LoadOrStore(e.Message, struct{}{}); !dup {
			l.WithField("production", note).Info("resyncd: embedded etcd: " + e.Message)
		}
		return nil
	}
	if c.closing.Load() && closedListener(enc.Fields) {
		l.Debug(e.Message)
		return nil
	}
	switch {
	case e.Level >= zapcore.ErrorLevel:
		l.Error(e.Message)
	default:
		l.Warn(e.Message)
	}
	return nil
}

// closedListener reports whether etcd's error field is a listener or server
// closed under it, the normal end of its serving goroutines.
func closedListener(fields map[string]any) bool {
	err, ok := fields["error"]
	if !ok {
		return false
	}
	s := fmt.Sprint(err)
	for _, closed := range []string{"server closed", "Server closed", "use of closed network connection"} {
		if strings.Contains(s, closed) {
			return true
		}
	}
	return false
}
