package etcdtest

import (
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

// Logger returns a logrus logger at level ("debug", "info", "warn",
// "error") whose lines go to t.Log, so they show only for failed or -v
// tests, next to the test that wrote them.
func Logger(t testing.TB, level string) *logrus.Logger {
	l := logrus.New()
	l.SetOutput(tWriter{t})
	lv, err := logrus.ParseLevel(level)
	if err != nil {
		lv = logrus.InfoLevel
	}
	l.SetLevel(lv)
	return l
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
