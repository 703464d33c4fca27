package resync_test

import (
	"log"
	"os"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync"
)

// The Plugin takes an injected *clientv3.Client, so TLS and authentication
// are the client's configuration. An agent of a secured deployment
// connects with its CA, its client certificate and its etcd user (the one
// `resyncctl rbac apply` made for it, bound to the role
// resync-agent-<name>). With etcd's --client-cert-auth and no password,
// the certificate's CN is the etcd user.
func Example_tlsAndAuth() {
	tlsCfg, err := transport.TLSInfo{
		TrustedCAFile: "/etc/resync/ca.pem",
		CertFile:      "/etc/resync/agent-1.pem",
		KeyFile:       "/etc/resync/agent-1-key.pem",
	}.ClientConfig()
	if err != nil {
		log.Fatal(err)
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"https://etcd1:2379", "https://etcd2:2379", "https://etcd3:2379"},
		DialTimeout: 5 * time.Second,
		TLS:         tlsCfg,
		Username:    "agent-1", // its password: agent-1.password from rbac apply --secrets-dir
		Password:    os.Getenv("RESYNC_PASSWORD"),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	rs, err := resync.New(resync.Deps{Log: logrus.New(), Client: c}, resync.DefaultConfig("agent-1"))
	if err != nil {
		log.Fatal(err)
	}
	defer rs.Close()
	// ... rs.Register("ifplugin") as in Example.
}
