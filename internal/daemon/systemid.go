package daemon

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// SystemIDFile is the file, next to config.toml, that holds this host's
// runner-manager system id, as GitLab Runner's `.runner_system_id`.
const SystemIDFile = ".runner_system_id"

var systemIDPattern = regexp.MustCompile(`^[sr]_[0-9a-zA-Z]{12}$`)

// machineIDFiles are read, in order, to derive a stable "s_" system id.
var machineIDFiles = []string{"/etc/machine-id", "/var/lib/dbus/machine-id"}

// LoadSystemID returns the system id stored in SystemIDFile inside dir,
// creating the file (mode 0600) when it is missing or empty. A new id is
// "s_" + the first 12 hex digits of HMAC-SHA256 keyed by the machine id of
// the string "gitlab-runner", as GitLab Runner derives it, or "r_" + 12
// random alphanumerics when the host has no machine id. GitLab tells the
// hosts sharing one runner token apart by this id.
//
// It returns an error when the file exists but holds something that is not
// a system id (fix: delete the file), or cannot be read or written.
func LoadSystemID(dir string) (string, error) {
	path := filepath.Join(dir, SystemIDFile)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(data))
		if id != "" {
			if !systemIDPattern.MatchString(id) {
				return "", fmt.Errorf("%s holds %q, which is not a system id (s_ or r_ followed by 12 letters or digits); delete the file to make a new one", path, id)
			}
			return id, nil
		}
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("read system id: %w", err)
	}
	id, err := newSystemID()
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("store system id (GitLab needs it to tell runner hosts apart): %w", err)
	}
	return id, nil
}

func newSystemID() (string, error) {
	for _, f := range machineIDFiles {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		mid := strings.TrimSpace(string(data))
		if mid == "" {
			continue
		}
		mac := hmac.New(sha256.New, []byte(mid))
		mac.Write([]byte("gitlab-runner"))
		return "s_" + hex.EncodeToString(mac.Sum(nil))[:12], nil
	}
	return "r_" + randomAlnum(12), nil
}

func randomAlnum(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	for i := range b {
		// rand.Text-like: uniform enough for an identifier (62 symbols).
		var r [1]byte
		for {
			_, _ = rand.Read(r[:])
			if int(r[0]) < 248 { // 248 = 4*62, no modulo bias
				break
			}
		}
		b[i] = alphabet[int(r[0])%len(alphabet)]
	}
	return string(b)
}
