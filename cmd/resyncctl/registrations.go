package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/pflag"
)

// registrationDoc is one row of `registrations -o json`.
type registrationDoc struct {
	Agent        string    `json:"agent"`
	Plugin       string    `json:"plugin"`
	Order        int       `json:"order"`
	RegisteredAt time.Time `json:"registered_at"`
	// Lease is the agent session's lease, in hex as etcdctl prints it.
	Lease string `json:"lease"`
}

func setupRegistrations(fs *pflag.FlagSet) func(context.Context, *env) error {
	return func(ctx context.Context, e *env) error {
		c, ctx, cancel, err := e.connect(ctx)
		if err != nil {
			return err
		}
		defer cancel()
		rows, err := e.readRegistrations(ctx, c, 0)
		if err != nil {
			return err
		}
		docs := make([]registrationDoc, len(rows))
		for i, r := range rows {
			docs[i] = registrationDoc{Agent: r.Agent, Plugin: r.Plugin, Order: r.Order, RegisteredAt: r.RegisteredAt, Lease: fmt.Sprintf("%x", int64(r.Lease))}
		}
		if e.json {
			return writeJSON(e.stdout, struct {
				Registrations []registrationDoc `json:"registrations"`
			}{docs})
		}
		tw := newTable(e.stdout)
		row(tw, "AGENT", "PLUGIN", "ORDER", "REGISTERED_AT", "LEASE")
		for _, d := range docs {
			row(tw, d.Agent, d.Plugin, d.Order, timestamp(d.RegisteredAt), d.Lease)
		}
		return tw.Flush()
	}
}
