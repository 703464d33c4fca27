package resync

import (
	"fmt"
	"os"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/cli"
	"github.com/resyncd/resync/internal/etcdflags"
)

// The environment a Plugin reads in Init for what its flavor did not set
// (Deps.Client, Config.Agent, Config.Prefix). The variables are those of
// the resync binaries (RESYNC_<FLAG>: RESYNC_ENDPOINTS, RESYNC_CACERT,
// RESYNC_CERT, RESYNC_KEY, RESYNC_USER, RESYNC_PASSWORD,
// RESYNC_DIAL_TIMEOUT, RESYNC_PREFIX), plus the agent name.
const (
	// EnvEndpoints is the comma-separated etcd endpoints.
	EnvEndpoints = "RESYNC_ENDPOINTS"
	// EnvAgent is the agent name.
	EnvAgent = "RESYNC_AGENT"
	// EnvServiceLabel is cn-infra's service label, the agent name when
	// RESYNC_AGENT is not set.
	EnvServiceLabel = "MICROSERVICE_LABEL"
	// EnvConfig names a YAML or JSON file with the same settings by flag
	// name ("endpoints", "agent", "prefix", "cacert", "user", ...): the
	// environment wins over it.
	EnvConfig = "RESYNC_CONFIG"
)

// settings are what Init reads from the environment and the config file.
type settings struct {
	etcd          etcdflags.Flags
	agent, prefix string
	file          string // the config file read, if any
}

// readSettings reads the environment (through lookup) and the file that
// RESYNC_CONFIG names, with the binaries' parsing (internal/cli): the
// environment first, then MICROSERVICE_LABEL for the agent, then the file.
func readSettings(lookup func(string) (string, bool)) (settings, error) {
	s := settings{etcd: etcdflags.Default()}
	s.etcd.Endpoints = "" // no default: a missing setting is an error naming it
	fs := pflag.NewFlagSet("resync", pflag.ContinueOnError)
	s.etcd.Register(fs)
	fs.StringVar(&s.agent, "agent", "", "agent name")
	fs.StringVar(&s.prefix, "prefix", "", "etcd key prefix")
	if err := cli.ApplyEnv(fs, lookup); err != nil {
		return s, fmt.Errorf("resync: init: %w", err)
	}
	if v, ok := lookup(EnvServiceLabel); ok && v != "" && !fs.Changed("agent") {
		_ = fs.Set("agent", v) // a string flag takes any value
	}
	if path, ok := lookup(EnvConfig); ok && path != "" {
		s.file = path
		if err := cli.ApplyFile(fs, path); err != nil {
			return s, fmt.Errorf("resync: init: %w (%s)", err, EnvConfig)
		}
	}
	return s, nil
}

// resolve fills what deps and cfg lack from the environment. own is a
// client it made (the Plugin closes it). A missing setting is an error
// naming where to give it.
func resolve(deps Deps, cfg Config) (_ Deps, _ Config, own *clientv3.Client, err error) {
	if deps.Client != nil && cfg.Agent != "" && cfg.Prefix != "" {
		return deps, cfg, nil, nil
	}
	s, err := readSettings(os.LookupEnv)
	if err != nil {
		return deps, cfg, nil, err
	}
	if cfg.Agent == "" {
		cfg.Agent = s.agent
	}
	if cfg.Agent == "" {
		return deps, cfg, nil, fmt.Errorf("resync: init: no agent name: set Plugin.Config.Agent, %s or %s, or agent in the file %s names", EnvAgent, EnvServiceLabel, EnvConfig)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = s.prefix
	}
	if deps.Client != nil {
		return deps, cfg, nil, nil
	}
	if len(s.etcd.EndpointList()) == 0 {
		return deps, cfg, nil, fmt.Errorf("resync: init: no etcd endpoints: set Plugin.Deps.Client, %s (comma-separated host:port), or endpoints in the file %s names", EnvEndpoints, EnvConfig)
	}
	ccfg, err := s.etcd.Config()
	if err != nil {
		return deps, cfg, nil, fmt.Errorf("resync: init: etcd settings from the environment: %w", err)
	}
	c, err := clientv3.New(ccfg) // does not wait for etcd
	if err != nil {
		return deps, cfg, nil, fmt.Errorf("resync: init: etcd client for %s: %w", s.etcd.Endpoints, err)
	}
	deps.Client = c
	return deps, cfg, c, nil
}
