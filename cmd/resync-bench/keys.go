package main

import (
	"context"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/resyncd/resync/coordinator"
)

// KeysRow counts the keys under the prefix after a number of rounds.
type KeysRow struct {
	Rounds         int     `json:"rounds"`
	Participants   int     `json:"participants"`
	Keys           int64   `json:"keys"`
	Registrations  int64   `json:"registrations"`
	Acks           int64   `json:"acks"`
	RoundRecords   int64   `json:"round_records"`
	Requests       int64   `json:"requests"`
	Other          int64   `json:"other"` // revision, election
	PerParticipant float64 `json:"keys_per_participant"`
	// PerParticipantState is (registrations+acks)/participants: the part
	// that grows with participants; round records are bounded by History.
	PerParticipantState float64 `json:"state_keys_per_participant"`
}

func measureKeys(ctx context.Context, e *env, o options, log logrus.FieldLogger) ([]KeysRow, error) {
	sz := o.keySize
	prefix := "/bench/keys/"
	f, err := startFleet(ctx, e, sz, prefix, o.agentsPerClient, log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	k, err := startCoord(e, coordinator.Config{ID: "keys", Prefix: prefix, CoalesceWindow: o.coalesce}, log)
	if err != nil {
		return nil, err
	}
	defer k.Close()
	want := sz.participants()
	var out []KeysRow
	done := 0
	for _, target := range o.keyRounds {
		for done < target {
			if done > 0 {
				if err := request(ctx, e.kv, f.layout, "keys", 0); err != nil {
					return out, err
				}
			}
			fin, err := waitRound(ctx, k.hooks.finished, 5*time.Minute, "RoundFinished")
			if err != nil {
				return out, err
			}
			if err := checkClean(fin.round, want); err != nil {
				return out, err
			}
			done++
		}
		row := KeysRow{Rounds: done, Participants: want}
		for _, c := range []struct {
			p string
			n *int64
		}{{prefix, &row.Keys}, {f.layout.Registrations(), &row.Registrations}, {f.layout.Acks(), &row.Acks},
			{f.layout.Rounds(), &row.RoundRecords}, {f.layout.Requests(), &row.Requests}} {
			if *c.n, err = e.count(ctx, c.p); err != nil {
				return out, err
			}
		}
		row.Other = row.Keys - row.Registrations - row.Acks - row.RoundRecords - row.Requests
		row.PerParticipant = float64(row.Keys) / float64(want)
		row.PerParticipantState = float64(row.Registrations+row.Acks) / float64(want)
		out = append(out, row)
		progress("keys after %d rounds: %d (%.3f per participant)", done, row.Keys, row.PerParticipant)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("keys: no rounds to count")
	}
	return out, nil
}
