// Package e2e drives the docker-compose deployment (3 etcd members, 2
// resyncd, 3 agents) through a scripted fault scenario. Its test is behind
// the build tag e2e and runs with `make e2e`, which builds the images first;
// it needs a Docker daemon and bin/resyncctl, bin/resyncd on the host.
package e2e
