package aws

import (
	"strings"

	"github.com/fleetwright/taskscaler/provider"
)

// stateOf maps an Auto Scaling lifecycle state, health status and the
// cached EC2 facts (nil when DescribeInstances has not shown the instance
// yet) onto a provider state. listed is false for instances that are not
// members of the group's capacity and must not be reported at all (warm
// pool instances). known is false for a lifecycle state this code does not
// know; it is then reported as creating (never handed out, still counted
// against max_instances) and the caller warns.
//
// The table:
//
//	Pending, Pending:Wait, Pending:Proceed, Quarantined,
//	ReplacingRootVolume*, RootVolumeReplaced          → creating
//	InService, Healthy, EC2 running, address known    → running
//	InService but address not yet known (EC2's
//	  eventual consistency)                           → creating
//	InService but Unhealthy, or EC2 stopping,
//	  stopped, shutting-down, terminated (spot
//	  reclaim, external stop): AWS replaces it        → deleting
//	Standby, EnteringStandby: out of service, still
//	  occupying the group; never given jobs           → deleting
//	Terminating*, Detaching                           → deleting
//	Terminated, Detached                              → deleted
//	Warmed:* (warm pool, not part of the capacity)    → not listed
//	anything else                                     → creating, warned
func stateOf(lifecycle, health string, d *details) (state provider.State, listed, known bool) {
	switch {
	case strings.HasPrefix(lifecycle, "Warmed:"):
		return "", false, true
	case lifecycle == "Pending" || strings.HasPrefix(lifecycle, "Pending:") ||
		lifecycle == "Quarantined" || strings.HasPrefix(lifecycle, "ReplacingRootVolume") ||
		lifecycle == "RootVolumeReplaced":
		return provider.StateCreating, true, true
	case lifecycle == "InService":
		if health == "Unhealthy" {
			return provider.StateDeleting, true, true
		}
		if d == nil || d.privateIP == "" && d.publicIP == "" {
			return provider.StateCreating, true, true
		}
		switch d.state {
		case "stopping", "stopped", "shutting-down", "terminated":
			return provider.StateDeleting, true, true
		}
		return provider.StateRunning, true, true
	case lifecycle == "Standby" || lifecycle == "EnteringStandby":
		return provider.StateDeleting, true, true
	case lifecycle == "Terminated" || lifecycle == "Detached":
		return provider.StateDeleted, true, true
	case strings.HasPrefix(lifecycle, "Terminating") || lifecycle == "Detaching":
		return provider.StateDeleting, true, true
	}
	return provider.StateCreating, true, false
}

// goneOrGoing reports whether an instance in this lifecycle state is already
// being removed from the group (Decrease treats it as done).
func goneOrGoing(lifecycle string) bool {
	return strings.HasPrefix(lifecycle, "Terminat") || strings.HasPrefix(lifecycle, "Detach")
}

// countsTowardDesired reports whether an instance in this lifecycle state is
// part of the group's desired capacity (launching or in service).
func countsTowardDesired(lifecycle string) bool {
	switch {
	case strings.HasPrefix(lifecycle, "Warmed:"), goneOrGoing(lifecycle),
		lifecycle == "Standby", lifecycle == "EnteringStandby":
		return false
	}
	return true
}

// osArch converts EC2's Platform / PlatformDetails / Architecture to
// connector_config's os and arch words.
func osArch(platform, platformDetails, arch string) (os, goArch string) {
	os = "linux"
	if strings.EqualFold(platform, "windows") || strings.HasPrefix(strings.ToLower(platformDetails), "windows") {
		os = "windows"
	}
	switch arch {
	case "x86_64":
		goArch = "amd64"
	case "arm64":
		goArch = "arm64"
	case "i386":
		goArch = "386"
	case "x86_64_mac":
		os, goArch = "darwin", "amd64"
	case "arm64_mac":
		os, goArch = "darwin", "arm64"
	default:
		goArch = arch
	}
	return os, goArch
}
