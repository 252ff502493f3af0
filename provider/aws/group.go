package aws

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"
	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/provider"
)

// describeInstancesPageSize is the MaxResults of each DescribeInstances page
// (the API's maximum).
const describeInstancesPageSize = 1000

// liveEC2States are the EC2 states listed by a full DescribeInstances
// listing; terminated instances are left out, so an instance seen before and
// missing from a full listing is known to be terminated.
var liveEC2States = []string{"pending", "running", "shutting-down", "stopping", "stopped"}

// describeGroup fetches the Auto Scaling group (one DescribeAutoScalingGroups
// call, instances included).
func (g *Group) describeGroup(ctx context.Context, op string) (*astypes.AutoScalingGroup, error) {
	out, err := g.as.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{
		AutoScalingGroupNames: []string{g.cfg.Name},
	})
	if err != nil {
		return nil, classify(op, "DescribeAutoScalingGroups", "", err)
	}
	for i := range out.AutoScalingGroups {
		if awssdk.ToString(out.AutoScalingGroups[i].AutoScalingGroupName) == g.cfg.Name {
			return &out.AutoScalingGroups[i], nil
		}
	}
	return nil, &provider.Error{Class: provider.ErrNotFound, Op: op,
		Err: fmt.Errorf("auto scaling group %q does not exist in region %s: check plugin_config name and region (or AWS_REGION)", g.cfg.Name, g.region)}
}

// applyGroupLocked stores the group's membership. g.mu must be held.
func (g *Group) applyGroupLocked(asg *astypes.AutoScalingGroup, at time.Time) {
	m := make(map[string]member, len(asg.Instances))
	for _, in := range asg.Instances {
		id := awssdk.ToString(in.InstanceId)
		m[id] = member{lifecycle: string(in.LifecycleState), health: awssdk.ToString(in.HealthStatus), az: awssdk.ToString(in.AvailabilityZone)}
	}
	g.members = m
	g.listedAt = at
	for id := range g.details {
		if _, ok := m[id]; !ok {
			delete(g.details, id)
			delete(g.pushed, id)
		}
	}
}

// refresh re-reads the group's membership, and lists its instances in EC2
// when some member's address is unknown or when fullEC2 is set. Concurrent
// callers are serialised; a caller whose wanted data was refreshed while it
// waited (since) returns without calling AWS.
func (g *Group) refresh(ctx context.Context, op string, fullEC2 bool, since time.Time) error {
	g.refreshMu.Lock()
	defer g.refreshMu.Unlock()
	g.mu.Lock()
	fresh := g.listedAt.After(since) && (!fullEC2 || g.ec2At.After(since))
	g.mu.Unlock()
	if fresh && !since.IsZero() {
		return nil
	}
	started := g.o.now()
	asg, err := g.describeGroup(ctx, op)
	if err != nil {
		return err
	}
	g.mu.Lock()
	g.applyGroupLocked(asg, started)
	need := fullEC2
	for id, m := range g.members {
		if _, ok := g.details[id]; !ok && countsTowardDesired(m.lifecycle) {
			need = true
			break
		}
	}
	g.mu.Unlock()
	if !need {
		return nil
	}
	return g.listEC2(ctx, op, started)
}

// listEC2 lists every live instance tagged with the group's name, in pages of
// describeInstancesPageSize, and updates the EC2 cache.
func (g *Group) listEC2(ctx context.Context, op string, started time.Time) error {
	seen := map[string]details{}
	p := ec2.NewDescribeInstancesPaginator(g.ec2, &ec2.DescribeInstancesInput{
		Filters: []ec2types.Filter{
			{Name: awssdk.String("tag:aws:autoscaling:groupName"), Values: []string{g.cfg.Name}},
			{Name: awssdk.String("instance-state-name"), Values: liveEC2States},
		},
		MaxResults: awssdk.Int32(describeInstancesPageSize),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return classify(op, "DescribeInstances", "", err)
		}
		for _, r := range page.Reservations {
			for _, in := range r.Instances {
				seen[awssdk.ToString(in.InstanceId)] = detailsOf(in)
			}
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for id, d := range seen {
		if _, ok := g.members[id]; ok {
			g.details[id] = d
		}
	}
	// An instance seen before and absent from a full listing of live states
	// is terminated (EC2 never hides an instance it has shown).
	for id, d := range g.details {
		if _, ok := seen[id]; !ok {
			d.state = "terminated"
			g.details[id] = d
		}
	}
	g.ec2At = started
	return nil
}

func detailsOf(in ec2types.Instance) details {
	d := details{
		privateIP: awssdk.ToString(in.PrivateIpAddress),
		publicIP:  awssdk.ToString(in.PublicIpAddress),
	}
	if in.State != nil {
		d.state = string(in.State.Name)
	}
	if in.Placement != nil {
		d.az = awssdk.ToString(in.Placement.AvailabilityZone)
	}
	d.os, d.arch = osArch(string(in.Platform), awssdk.ToString(in.PlatformDetails), string(in.Architecture))
	for _, t := range in.Tags {
		if awssdk.ToString(t.Key) == PortTag {
			if p, err := strconv.Atoi(awssdk.ToString(t.Value)); err == nil && p > 0 && p < 65536 {
				d.port = p
			}
		}
	}
	return d
}

// Update lists the group's instances with their states (see stateOf for the
// mapping). It costs one DescribeAutoScalingGroups call, plus one
// DescribeInstances page per 1,000 instances only when some instance's
// address is not cached yet. Errors are classified (ErrThrottled,
// ErrNotFound when the group is gone, ErrAccessDenied); fn is not called
// then.
func (g *Group) Update(ctx context.Context, fn func(id string, state provider.State)) error {
	if err := g.checkUsable("update"); err != nil {
		return err
	}
	if err := g.refresh(ctx, "update", false, time.Time{}); err != nil {
		return err
	}
	type row struct {
		id    string
		state provider.State
	}
	g.mu.Lock()
	rows := make([]row, 0, len(g.members))
	var unknown []string
	for id, m := range g.members {
		var dp *details
		if d, ok := g.details[id]; ok {
			dp = &d
		}
		st, listed, known := stateOf(m.lifecycle, m.health, dp)
		if !known && !g.warnedFor[m.lifecycle] {
			g.warnedFor[m.lifecycle] = true
			unknown = append(unknown, m.lifecycle)
		}
		if listed {
			rows = append(rows, row{id, st})
		}
	}
	log := g.log
	g.mu.Unlock()
	for _, s := range unknown {
		log.Warn("unknown Auto Scaling lifecycle state; reporting such instances as creating (not used for jobs)", zap.String("lifecycle_state", s))
	}
	slices.SortFunc(rows, func(a, b row) int {
		if a.id < b.id {
			return -1
		}
		if a.id > b.id {
			return 1
		}
		return 0
	})
	for _, r := range rows {
		fn(r.id, r.state)
	}
	return nil
}

// Increase raises the group's desired capacity by n with one
// SetDesiredCapacity call, after one DescribeAutoScalingGroups for the
// current numbers, and returns how many instances it really added:
// min(n, MaxSize − base) where base is the larger of the current desired
// capacity and the instances launching or in service (so a desired capacity
// lowered behind our back above protected instances still yields n new
// instances). On a full group it returns 0 and an ErrQuotaExceeded error.
// Errors are classified as in classify.
func (g *Group) Increase(ctx context.Context, n int) (int, error) {
	if err := g.checkUsable("increase"); err != nil {
		return 0, err
	}
	if n <= 0 {
		return 0, nil
	}
	g.scaleMu.Lock()
	defer g.scaleMu.Unlock()
	asg, err := g.describeGroup(ctx, "increase")
	if err != nil {
		return 0, err
	}
	g.mu.Lock()
	g.applyGroupLocked(asg, g.o.now())
	g.mu.Unlock()
	desired := int(awssdk.ToInt32(asg.DesiredCapacity))
	maxSize := int(awssdk.ToInt32(asg.MaxSize))
	active := 0
	for _, in := range asg.Instances {
		if countsTowardDesired(string(in.LifecycleState)) {
			active++
		}
	}
	base := max(desired, active)
	add := min(n, maxSize-base)
	if add <= 0 {
		return 0, &provider.Error{Class: provider.ErrQuotaExceeded, Op: "increase",
			Err: fmt.Errorf("auto scaling group %q is at its MaxSize %d (desired %d, %d instances launching or in service); raise MaxSize or lower max_instances", g.cfg.Name, maxSize, desired, active)}
	}
	_, err = g.as.SetDesiredCapacity(ctx, &autoscaling.SetDesiredCapacityInput{
		AutoScalingGroupName: awssdk.String(g.cfg.Name),
		DesiredCapacity:      awssdk.Int32(int32(base + add)),
		HonorCooldown:        awssdk.Bool(false),
	})
	if err != nil {
		return 0, classify("increase", "SetDesiredCapacity", "", err)
	}
	g.logger().Info("raised desired capacity", zap.Int("from", desired), zap.Int("to", base+add), zap.Int("requested", n), zap.Int("added", add))
	if add < n {
		return add, &provider.Error{Class: provider.ErrQuotaExceeded, Op: "increase",
			Err: fmt.Errorf("added %d of %d instances: Auto Scaling group %q reached its MaxSize %d", add, n, g.cfg.Name, maxSize)}
	}
	return add, nil
}

// Decrease terminates exactly the given instances with
// TerminateInstanceInAutoScalingGroup and ShouldDecrementDesiredCapacity,
// at most DefaultDecreaseParallelism calls at a time, and returns the ids
// accepted (in input order). An id that is not a member of this group
// (after one membership refresh), or is already terminating, is accepted
// without any call: this provider never terminates an instance outside its
// group, whatever ids it is given. A termination refused with
// ValidationError is re-checked against the group: an instance gone
// meanwhile is accepted; an instance above the desired capacity (lowered
// behind our back while instances are protected) is terminated without
// decrement, which launches no replacement. Other failures (e.g. MinSize
// reached) are returned joined, classified as in classify. Increase and
// Decrease are serialised with each other.
func (g *Group) Decrease(ctx context.Context, ids []string) ([]string, error) {
	if err := g.checkUsable("decrease"); err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, nil
	}
	g.scaleMu.Lock()
	defer g.scaleMu.Unlock()
	g.mu.Lock()
	missing := false
	for _, id := range ids {
		if _, ok := g.members[id]; !ok {
			missing = true
		}
	}
	g.mu.Unlock()
	if missing {
		// Membership may be stale (an instance launched since the last
		// Update): re-read it before deciding an id is foreign.
		if err := g.refreshMembers(ctx, "decrease"); err != nil {
			return nil, err
		}
	}
	accepted := make([]bool, len(ids))
	var toTerminate []int
	g.mu.Lock()
	for i, id := range ids {
		m, ok := g.members[id]
		switch {
		case !ok:
			accepted[i] = true
			g.log.Debug("decrease: instance is not in the group; nothing to do", zap.String("instance_id", id))
		case goneOrGoing(m.lifecycle):
			accepted[i] = true
		default:
			toTerminate = append(toTerminate, i)
		}
	}
	log := g.log
	g.mu.Unlock()

	errs := make([]error, len(ids))
	var recheck []int
	var mu sync.Mutex
	sem := make(chan struct{}, g.o.parallelism)
	var wg sync.WaitGroup
	for _, i := range toTerminate {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			err := g.terminate(ctx, ids[i], true)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				accepted[i] = true
			case apiCode(err) == "ValidationError":
				recheck = append(recheck, i)
				errs[i] = classify("decrease", "TerminateInstanceInAutoScalingGroup", ids[i], err)
			default:
				errs[i] = classify("decrease", "TerminateInstanceInAutoScalingGroup", ids[i], err)
			}
		})
	}
	wg.Wait()
	slices.Sort(recheck)
	for _, i := range recheck {
		// Re-read the group: the instance may have gone meanwhile, or the
		// desired capacity may already be below the instances in service
		// (lowered behind our back above protected instances), in which
		// case decrementing it is both impossible at MinSize and unneeded:
		// terminating without decrement launches no replacement.
		asg, err := g.describeGroup(ctx, "decrease")
		if err != nil {
			continue
		}
		g.mu.Lock()
		g.applyGroupLocked(asg, g.o.now())
		m, ok := g.members[ids[i]]
		g.mu.Unlock()
		if !ok || goneOrGoing(m.lifecycle) {
			accepted[i], errs[i] = true, nil
			continue
		}
		active := 0
		for _, in := range asg.Instances {
			if countsTowardDesired(string(in.LifecycleState)) {
				active++
			}
		}
		if int(awssdk.ToInt32(asg.DesiredCapacity)) < active {
			if err := g.terminate(ctx, ids[i], false); err != nil {
				errs[i] = classify("decrease", "TerminateInstanceInAutoScalingGroup", ids[i], err)
			} else {
				accepted[i], errs[i] = true, nil
			}
		}
	}
	var out []string
	for i, id := range ids {
		if accepted[i] {
			out = append(out, id)
		}
	}
	g.mu.Lock()
	for _, id := range out {
		if m, ok := g.members[id]; ok && !goneOrGoing(m.lifecycle) {
			m.lifecycle = "Terminating"
			g.members[id] = m
		}
	}
	g.mu.Unlock()
	err := errors.Join(errs...)
	log.Info("terminated instances", zap.Int("requested", len(ids)), zap.Int("accepted", len(out)), zap.Int("calls", len(toTerminate)), zap.Error(err))
	return out, err
}

// terminate calls TerminateInstanceInAutoScalingGroup for one instance.
func (g *Group) terminate(ctx context.Context, id string, decrement bool) error {
	_, err := g.as.TerminateInstanceInAutoScalingGroup(ctx, &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId:                     awssdk.String(id),
		ShouldDecrementDesiredCapacity: awssdk.Bool(decrement),
	})
	return err
}

// refreshMembers re-reads the group's membership only.
func (g *Group) refreshMembers(ctx context.Context, op string) error {
	at := g.o.now()
	asg, err := g.describeGroup(ctx, op)
	if err != nil {
		return err
	}
	g.mu.Lock()
	g.applyGroupLocked(asg, at)
	g.mu.Unlock()
	return nil
}

// Heartbeat reports whether instance id is still healthy from AWS's point
// of view: a member of the group, in service and Healthy, and not stopping,
// stopped, shutting down or terminated in EC2 (spot reclaim, external
// termination). It answers from state at most HeartbeatMaxAge old; all
// heartbeats share one refresh (one DescribeAutoScalingGroups and one
// DescribeInstances page per 1,000 instances) per HeartbeatMaxAge. Errors:
// ErrInstanceUnhealthy class when unhealthy, or the refresh's classified
// error.
func (g *Group) Heartbeat(ctx context.Context, id string) error {
	if err := g.checkUsable("heartbeat"); err != nil {
		return err
	}
	now := g.o.now()
	since := now.Add(-g.o.heartbeatMaxAge)
	g.mu.Lock()
	stale := !g.ec2At.After(since) || !g.listedAt.After(since)
	g.mu.Unlock()
	if stale {
		if err := g.refresh(ctx, "heartbeat", true, since); err != nil {
			return err
		}
	}
	g.mu.Lock()
	m, isMember := g.members[id]
	d, seen := g.details[id]
	g.mu.Unlock()
	unhealthy := func(why string) error {
		return &provider.Error{Class: provider.ErrInstanceUnhealthy, Op: "heartbeat", ID: id, Err: errors.New(why)}
	}
	switch {
	case !isMember:
		return unhealthy("no longer in the Auto Scaling group")
	case m.lifecycle != "InService":
		return unhealthy("Auto Scaling lifecycle state is " + m.lifecycle)
	case m.health == "Unhealthy":
		return unhealthy("Auto Scaling health status is Unhealthy")
	case seen && d.state != "running" && d.state != "pending":
		return unhealthy("EC2 state is " + d.state + " (spot reclaim or external stop/termination)")
	}
	return nil
}

// ConnectInfo returns how to reach instance id: InternalAddr is its private
// IP and ExternalAddr its public IP (if any), each with the port
// (connector_config protocol_port, or the PortTag tag); OS and Arch come
// from EC2 unless connector_config sets them. With dynamic credentials
// (use_static_credentials = false) it pushes the provider's public key for
// Username with EC2 Instance Connect (at most every 30 seconds per
// instance) and returns the private key with Expires set to the push time +
// 60 seconds. Errors: ErrNotFound class when id is not an instance of this
// group; classified AWS errors otherwise.
func (g *Group) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	if err := g.checkUsable("connect info"); err != nil {
		return provider.ConnectInfo{}, err
	}
	g.mu.Lock()
	d, ok := g.details[id]
	m, isMember := g.members[id]
	settings := g.settings
	g.mu.Unlock()
	if isMember && goneOrGoing(m.lifecycle) {
		return provider.ConnectInfo{}, &provider.Error{Class: provider.ErrNotFound, Op: "connect info", ID: id,
			Err: fmt.Errorf("instance is %s", m.lifecycle)}
	}
	if !ok {
		var err error
		if d, err = g.describeOne(ctx, id); err != nil {
			return provider.ConnectInfo{}, err
		}
	}
	if d.state == "terminated" || d.state == "shutting-down" {
		return provider.ConnectInfo{}, &provider.Error{Class: provider.ErrNotFound, Op: "connect info", ID: id,
			Err: fmt.Errorf("instance is %s", d.state)}
	}
	ci := provider.ConnectInfo{ConnectorConfig: settings.ConnectorConfig, ID: id}
	if ci.OS == "" {
		ci.OS = d.os
	}
	if ci.Arch == "" {
		ci.Arch = d.arch
	}
	if ci.Protocol == "" && ci.OS == "windows" {
		ci.Protocol = provider.ProtocolWinRM
	}
	port := ci.Port()
	if d.port > 0 && (ci.Protocol == "" || ci.Protocol == provider.ProtocolSSH) {
		port = d.port
		ci.ProtocolPort = port
	}
	if d.privateIP != "" {
		ci.InternalAddr = joinHostPort(d.privateIP, port)
	}
	if d.publicIP != "" {
		ci.ExternalAddr = joinHostPort(d.publicIP, port)
	}
	if settings.UseStaticCredentials {
		return ci, nil
	}
	if ci.OS == "windows" {
		return provider.ConnectInfo{}, fmt.Errorf("aws: connect info %s: EC2 Instance Connect does not support Windows instances; set use_static_credentials = true with a username and password in connector_config", id)
	}
	if d.state == "pending" && (!isMember || m.lifecycle != "InService") {
		// Still booting: EC2 Instance Connect refuses keys until the
		// instance runs. Return the addresses with credentials that are
		// already expired, so callers ask again once it is running.
		now := g.o.now()
		ci.Expires = &now
		return ci, nil
	}
	exp, err := g.pushKey(ctx, id, ci.Username, d.az)
	if err != nil {
		return provider.ConnectInfo{}, err
	}
	ci.Key = g.privPEM
	ci.Password = ""
	ci.Expires = &exp
	return ci, nil
}

func joinHostPort(host string, port int) string {
	if port <= 0 {
		return host
	}
	return fmt.Sprintf("%s:%d", host, port)
}

// describeOne fetches one instance from EC2 and checks it belongs to the
// group.
func (g *Group) describeOne(ctx context.Context, id string) (details, error) {
	out, err := g.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		return details{}, classify("connect info", "DescribeInstances", id, err)
	}
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			if awssdk.ToString(in.InstanceId) != id {
				continue
			}
			for _, t := range in.Tags {
				if awssdk.ToString(t.Key) == "aws:autoscaling:groupName" && awssdk.ToString(t.Value) == g.cfg.Name {
					d := detailsOf(in)
					g.mu.Lock()
					if _, member := g.members[id]; member {
						g.details[id] = d
					}
					g.mu.Unlock()
					return d, nil
				}
			}
			return details{}, &provider.Error{Class: provider.ErrNotFound, Op: "connect info", ID: id,
				Err: fmt.Errorf("instance is not in Auto Scaling group %q", g.cfg.Name)}
		}
	}
	return details{}, &provider.Error{Class: provider.ErrNotFound, Op: "connect info", ID: id, Err: errors.New("no such instance")}
}

// pushKey sends the public key with EC2 Instance Connect unless a push for
// the same user is less than keyReuse old, and returns when it expires.
func (g *Group) pushKey(ctx context.Context, id, user, az string) (time.Time, error) {
	now := g.o.now()
	g.mu.Lock()
	p, ok := g.pushed[id]
	g.mu.Unlock()
	if ok && p.user == user && now.Sub(p.at) < keyReuse {
		return p.at.Add(instanceConnectKeyLifetime), nil
	}
	in := &ec2instanceconnect.SendSSHPublicKeyInput{
		InstanceId:     awssdk.String(id),
		InstanceOSUser: awssdk.String(user),
		SSHPublicKey:   awssdk.String(g.pubKey),
	}
	if az != "" {
		in.AvailabilityZone = awssdk.String(az)
	}
	if _, err := g.ic.SendSSHPublicKey(ctx, in); err != nil {
		return time.Time{}, classify("connect info", "SendSSHPublicKey", id, err)
	}
	g.mu.Lock()
	g.pushed[id] = push{user: user, at: now}
	g.mu.Unlock()
	return now.Add(instanceConnectKeyLifetime), nil
}
