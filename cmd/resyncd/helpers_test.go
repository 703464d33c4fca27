package main

import (
	"io"

	"github.com/sirupsen/logrus"
)

func quiet() logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return l
}
