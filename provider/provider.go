// Package provider defines the instance-group interface that every cloud
// provider implements, the value types that cross it, and the error classes
// providers return.
//
// The shape follows GitLab's fleeting provider.InstanceGroup so that people
// who wrote a fleeting plugin feel at home: a provider manages one group of
// identical instances (an AWS Auto Scaling group, a GCP managed instance
// group, a directory of local sandboxes) and the taskscaler decides how many
// of them should exist.
//
// This package imports nothing else of this module.
package provider

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// State is the lifecycle state of one instance as the provider reports it in
// Update. The values match fleeting's provider.State strings.
type State string

const (
	// StateCreating: the instance was requested and is booting; it cannot
	// be connected to yet.
	StateCreating State = "creating"
	// StateRunning: the instance is up; ConnectInfo may be called.
	StateRunning State = "running"
	// StateDeleting: the instance is being removed. It still counts against
	// max_instances until it is gone.
	StateDeleting State = "deleting"
	// StateDeleted: the instance is gone. Providers may report it once, or
	// simply stop listing the instance; both mean the same.
	StateDeleted State = "deleted"
	// StateTimeout: the instance failed to reach running in time or ended in
	// an error state. The taskscaler removes it with Decrease.
	StateTimeout State = "timeout"
)

// Valid reports whether s is one of the defined states.
func (s State) Valid() bool {
	switch s {
	case StateCreating, StateRunning, StateDeleting, StateDeleted, StateTimeout:
		return true
	}
	return false
}

// Protocol is the remote-access protocol of an instance.
type Protocol string

const (
	// ProtocolSSH is SSH (the default).
	ProtocolSSH Protocol = "ssh"
	// ProtocolWinRM is WinRM over HTTP.
	ProtocolWinRM Protocol = "winrm"
	// ProtocolWinRMHTTPS is WinRM over HTTPS.
	ProtocolWinRMHTTPS Protocol = "winrm+https"
)

// DefaultProtocolPorts maps each protocol to the TCP port used when
// ConnectorConfig.ProtocolPort is 0, as fleeting's DefaultProtocolPorts.
var DefaultProtocolPorts = map[Protocol]int{
	ProtocolSSH:        22,
	ProtocolWinRM:      5985,
	ProtocolWinRMHTTPS: 5986,
}

// ConnectorConfig holds how to reach and log in to instances. It is filled
// from `[runners.autoscaler.connector_config]` and handed to the provider in
// Settings; the provider returns it, completed, inside ConnectInfo.
type ConnectorConfig struct {
	// OS is the operating system: "linux", "windows" or "darwin".
	OS string
	// Arch is the CPU architecture: "amd64" or "arm64".
	Arch string
	// Protocol is the remote-access protocol; empty means ssh.
	Protocol Protocol
	// ProtocolPort is the TCP port; 0 means DefaultProtocolPorts[Protocol].
	ProtocolPort int
	// Username is the login user.
	Username string
	// Password is the login password (static SSH or WinRM). Never log it.
	Password string
	// Key is a PEM-encoded private key. Never log it.
	Key []byte
	// UseStaticCredentials, when true, makes providers use Username,
	// Password and Key as given instead of provisioning dynamic credentials.
	UseStaticCredentials bool
	// Keepalive is the SSH keepalive interval; 0 means the connector default.
	Keepalive time.Duration
	// Timeout bounds how long dialing an instance may take, including
	// retries while it boots; 0 means the connector default.
	Timeout time.Duration
}

// Port returns ProtocolPort, or the protocol's default port when it is 0.
func (c ConnectorConfig) Port() int {
	if c.ProtocolPort > 0 {
		return c.ProtocolPort
	}
	p := c.Protocol
	if p == "" {
		p = ProtocolSSH
	}
	return DefaultProtocolPorts[p]
}

// Settings is what the taskscaler passes to InstanceGroup.Init.
type Settings struct {
	ConnectorConfig
}

// ConnectInfo tells a connector how to reach one instance.
type ConnectInfo struct {
	ConnectorConfig

	// ID is the provider's instance id.
	ID string
	// ExternalAddr is the public address, "host" or "host:port"; may be empty.
	ExternalAddr string
	// InternalAddr is the private address, "host" or "host:port"; may be empty.
	InternalAddr string
	// HostKeys are the instance's SSH host public keys in SSH wire format
	// (as ssh.PublicKey.Marshal returns), when the provider knows them.
	// Connectors verify against them; when empty they pin the first key seen.
	HostKeys [][]byte
	// Expires is when dynamic credentials in this ConnectInfo stop working
	// (e.g. an EC2 Instance Connect key, valid 60 s); nil means never.
	Expires *time.Time
}

// Capability names an optional provider feature declared in Info.
type Capability string

// Info describes a provider, returned by Init.
type Info struct {
	// ID identifies the group, e.g. "aws/us-east-1/my-asg".
	ID string
	// MaxSize is the largest number of instances the group can hold, in
	// instances; 0 means no limit of its own.
	MaxSize int
	// Version and BuildInfo describe the provider implementation.
	Version   string
	BuildInfo string
	// Capabilities lists optional features.
	Capabilities []Capability
}

// InstanceGroup is a cloud group of identical instances. Implementations must
// be safe for concurrent use by multiple goroutines, although the taskscaler
// calls Update, Increase and Decrease from one goroutine.
type InstanceGroup interface {
	// Init validates the provider's configuration and connects to the cloud.
	// It is called once, before any other method. logger is never nil.
	Init(ctx context.Context, logger *zap.Logger, settings Settings) (Info, error)

	// Update lists every instance of the group and calls fn once per
	// instance with its state. An instance that is not listed is gone.
	Update(ctx context.Context, fn func(id string, state State)) error

	// Increase asks for n more instances and returns how many were really
	// requested (0..n). A partial result may come with an error.
	Increase(ctx context.Context, n int) (int, error)

	// Decrease deletes exactly the given instances and returns the ids it
	// accepted for deletion. Ids that are already gone count as accepted:
	// deleting a missing instance is not an error. It must never shrink the
	// group by removing other instances.
	Decrease(ctx context.Context, ids []string) ([]string, error)

	// ConnectInfo returns how to reach instance id. It returns an error
	// matching ErrNotFound when the instance does not exist.
	ConnectInfo(ctx context.Context, id string) (ConnectInfo, error)

	// Shutdown releases provider resources (connections, uploaded keys).
	// It must NOT delete instances: the taskscaler does that with Decrease
	// when configured to.
	Shutdown(ctx context.Context) error
}

// Heartbeater is an optional InstanceGroup capability: a cheap check that an
// instance is still healthy from the cloud's point of view (not terminated,
// not reclaimed as spot capacity). It returns nil when healthy and an error
// matching ErrInstanceUnhealthy (or ErrNotFound) when not. As fleeting's
// Heartbeat RPC.
type Heartbeater interface {
	Heartbeat(ctx context.Context, id string) error
}
