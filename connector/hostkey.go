package connector

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/fleetwright/taskscaler/provider"
)

// HostKeyStore remembers the SSH host key of each instance (trust on first
// use). It is safe for concurrent use. The zero value is an empty store,
// like NewHostKeyStore's.
//
// For an instance whose ConnectInfo.HostKeys is non-empty the store is not
// consulted: the server must present one of those keys. Otherwise the first
// key seen is pinned under the instance id (or the address when the id is
// empty) and every later connection must present the same key; a changed
// key fails with ErrHostKeyMismatch. Pins live in memory only.
type HostKeyStore struct {
	mu   sync.Mutex
	pins map[string]ssh.PublicKey
}

// NewHostKeyStore returns an empty store.
func NewHostKeyStore() *HostKeyStore {
	return &HostKeyStore{pins: map[string]ssh.PublicKey{}}
}

// Pinned returns the key pinned for instanceID, or nil.
func (s *HostKeyStore) Pinned(instanceID string) ssh.PublicKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pins[instanceID]
}

// Forget drops the pin of instanceID, e.g. once the instance is deleted and
// its id could be reused.
func (s *HostKeyStore) Forget(instanceID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pins, instanceID)
}

// callback returns the host key callback for info and the host key
// algorithms to ask the server for (so that a server with several host keys
// presents the one we know; nil means the library default).
func (s *HostKeyStore) callback(info provider.ConnectInfo) (ssh.HostKeyCallback, []string) {
	if len(info.HostKeys) > 0 {
		var known []ssh.PublicKey
		for _, raw := range info.HostKeys {
			if k, err := ssh.ParsePublicKey(raw); err == nil {
				known = append(known, k)
			}
		}
		return func(_ string, _ net.Addr, key ssh.PublicKey) error {
			for _, k := range known {
				if bytes.Equal(k.Marshal(), key.Marshal()) {
					return nil
				}
			}
			want := make([]string, 0, len(known))
			for _, k := range known {
				want = append(want, ssh.FingerprintSHA256(k))
			}
			if len(known) == 0 {
				want = append(want, "(none parseable)")
			}
			return fmt.Errorf("%w: instance %q presented %s %s, but its provider reports %s; the instance was replaced or the connection is intercepted",
				ErrHostKeyMismatch, info.ID, key.Type(), ssh.FingerprintSHA256(key), strings.Join(want, ", "))
		}, algorithmsFor(known)
	}
	id := info.ID
	if id == "" {
		id = "addr:" + info.InternalAddr + "|" + info.ExternalAddr
	}
	var algos []string
	if k := s.Pinned(id); k != nil {
		algos = algorithmsFor([]ssh.PublicKey{k})
	}
	return func(_ string, _ net.Addr, key ssh.PublicKey) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		pinned, ok := s.pins[id]
		if !ok {
			if s.pins == nil {
				s.pins = map[string]ssh.PublicKey{}
			}
			s.pins[id] = key
			return nil
		}
		if bytes.Equal(pinned.Marshal(), key.Marshal()) {
			return nil
		}
		return fmt.Errorf("%w: instance %q presented %s %s, but %s %s was pinned on first connection; the instance was replaced or the connection is intercepted",
			ErrHostKeyMismatch, info.ID, key.Type(), ssh.FingerprintSHA256(key), pinned.Type(), ssh.FingerprintSHA256(pinned))
	}, algos
}

// algorithmsFor lists the host key algorithms that select the given keys.
func algorithmsFor(keys []ssh.PublicKey) []string {
	var out []string
	seen := map[string]bool{}
	add := func(a string) {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for _, k := range keys {
		switch k.Type() {
		case ssh.KeyAlgoRSA:
			add(ssh.KeyAlgoRSASHA512)
			add(ssh.KeyAlgoRSASHA256)
			add(ssh.KeyAlgoRSA)
		default:
			add(k.Type())
		}
	}
	return out
}
