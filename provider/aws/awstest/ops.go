package awstest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	asNS  = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
	ec2NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
)

func xmlEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '<':
			b.WriteString("&lt;")
		case '>':
			b.WriteString("&gt;")
		case '&':
			b.WriteString("&amp;")
		case '"':
			b.WriteString("&quot;")
		case '\'':
			b.WriteString("&apos;")
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func isoTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

func (s *Server) describeGroups(form url.Values) (string, *apiError) {
	names := members(form, "AutoScalingGroupNames")
	var b strings.Builder
	fmt.Fprintf(&b, `<DescribeAutoScalingGroupsResponse xmlns="%s">
  <DescribeAutoScalingGroupsResult>
    <AutoScalingGroups>
`, asNS)
	var list []*group
	if len(names) == 0 {
		list = sortedGroups(s.groups)
	}
	for _, n := range names {
		if g := s.groups[n]; g != nil {
			list = append(list, g)
		}
	}
	for _, g := range list {
		s.writeGroup(&b, g)
	}
	b.WriteString(`    </AutoScalingGroups>
  </DescribeAutoScalingGroupsResult>
  <ResponseMetadata>
    <RequestId>{{RequestId}}</RequestId>
  </ResponseMetadata>
</DescribeAutoScalingGroupsResponse>
`)
	return b.String(), nil
}

func (s *Server) writeGroup(b *strings.Builder, g *group) {
	name := xmlEscape(g.name)
	fmt.Fprintf(b, `      <member>
        <AutoScalingGroupName>%s</AutoScalingGroupName>
        <AutoScalingGroupARN>arn:aws:autoscaling:%s:123456789012:autoScalingGroup:0d9b3c5e-7f1a-4c2b-9e8d-000000000000:autoScalingGroupName/%s</AutoScalingGroupARN>
        <LaunchTemplate>
          <LaunchTemplateName>ci-runners</LaunchTemplateName>
          <Version>$Latest</Version>
          <LaunchTemplateId>lt-0a20c965061f64abc</LaunchTemplateId>
        </LaunchTemplate>
        <MinSize>%d</MinSize>
        <MaxSize>%d</MaxSize>
        <DesiredCapacity>%d</DesiredCapacity>
        <DefaultCooldown>300</DefaultCooldown>
        <AvailabilityZones>
          <member>%sa</member>
          <member>%sb</member>
          <member>%sc</member>
        </AvailabilityZones>
        <LoadBalancerNames/>
        <TargetGroupARNs/>
        <HealthCheckType>EC2</HealthCheckType>
        <HealthCheckGracePeriod>300</HealthCheckGracePeriod>
        <Instances>
`, name, s.opts.Region, name, g.min, g.max, g.desired, s.opts.Region, s.opts.Region, s.opts.Region)
	for _, id := range g.members {
		in := s.instances[id]
		fmt.Fprintf(b, `          <member>
            <InstanceId>%s</InstanceId>
            <InstanceType>t3.medium</InstanceType>
            <AvailabilityZone>%s</AvailabilityZone>
            <LifecycleState>%s</LifecycleState>
            <HealthStatus>%s</HealthStatus>
            <LaunchTemplate>
              <LaunchTemplateName>ci-runners</LaunchTemplateName>
              <Version>1</Version>
              <LaunchTemplateId>lt-0a20c965061f64abc</LaunchTemplateId>
            </LaunchTemplate>
            <ProtectedFromScaleIn>%t</ProtectedFromScaleIn>
          </member>
`, in.id, in.az, xmlEscape(in.lifecycle), in.health, in.protected)
	}
	b.WriteString(`        </Instances>
        <CreatedTime>` + isoTime(g.created) + `</CreatedTime>
        <SuspendedProcesses>
`)
	for _, p := range g.suspended {
		fmt.Fprintf(b, `          <member>
            <ProcessName>%s</ProcessName>
            <SuspensionReason>User suspended at 2026-01-05T10:00:00Z</SuspensionReason>
          </member>
`, xmlEscape(p))
	}
	fmt.Fprintf(b, `        </SuspendedProcesses>
        <VPCZoneIdentifier>subnet-0a1b2c3d,subnet-1a2b3c4d</VPCZoneIdentifier>
        <EnabledMetrics/>
        <Tags/>
        <TerminationPolicies>
          <member>Default</member>
        </TerminationPolicies>
        <NewInstancesProtectedFromScaleIn>%t</NewInstancesProtectedFromScaleIn>
        <ServiceLinkedRoleARN>arn:aws:iam::123456789012:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling</ServiceLinkedRoleARN>
        <CapacityRebalance>false</CapacityRebalance>
      </member>
`, g.protect)
}

func (s *Server) setDesired(form url.Values) (string, *apiError) {
	name := form.Get("AutoScalingGroupName")
	g := s.groups[name]
	if g == nil {
		return "", validation("AutoScalingGroup name not found - no such group: %s", name)
	}
	d, err := strconv.Atoi(form.Get("DesiredCapacity"))
	if err != nil {
		return "", validation("1 validation error detected: Value for 'desiredCapacity' must be an integer")
	}
	if d > g.max {
		return "", validation("New SetDesiredCapacity value %d is above max value %d for the AutoScalingGroup.", d, g.max)
	}
	if d < g.min {
		return "", validation("New SetDesiredCapacity value %d is below min value %d for the AutoScalingGroup.", d, g.min)
	}
	g.desired = d
	s.reconcile(g, s.opts.Now())
	return fmt.Sprintf(`<SetDesiredCapacityResponse xmlns="%s">
  <ResponseMetadata>
    <RequestId>{{RequestId}}</RequestId>
  </ResponseMetadata>
</SetDesiredCapacityResponse>
`, asNS), nil
}

func (s *Server) terminate(form url.Values) (string, *apiError) {
	id := form.Get("InstanceId")
	decrement := form.Get("ShouldDecrementDesiredCapacity") == "true"
	in := s.instances[id]
	if in == nil || in.group == "" {
		return "", validation("Instance Id not found - No managed instance found for instance ID: %s", id)
	}
	g := s.groups[in.group]
	if strings.HasPrefix(in.lifecycle, "Terminating") {
		return "", validation("The instance %s is already in state %s.", id, in.lifecycle)
	}
	if decrement && g.desired-1 < g.min {
		return "", validation("Currently, desiredSize equals minSize (%d). Terminating instance without replacement will violate group's min size constraint. Either set shouldDecrementDesiredCapacity flag to false or lower group's min size.", g.min)
	}
	now := s.opts.Now()
	wasActive := in.lifecycle != LifecycleStandby
	s.startTerminate(in, now)
	if decrement && wasActive {
		g.desired--
	}
	s.reconcile(g, now)
	cause := "At " + isoTime(now) + " instance " + id + " was taken out of service in response to a user request"
	if decrement {
		cause += ", shrinking the capacity from " + strconv.Itoa(g.desired+1) + " to " + strconv.Itoa(g.desired) + "."
	} else {
		cause += "."
	}
	return fmt.Sprintf(`<TerminateInstanceInAutoScalingGroupResponse xmlns="%s">
  <TerminateInstanceInAutoScalingGroupResult>
    <Activity>
      <ActivityId>%08x-4b3c-4d2e-9f10-%012x</ActivityId>
      <AutoScalingGroupName>%s</AutoScalingGroupName>
      <Description>Terminating EC2 instance: %s</Description>
      <Cause>%s</Cause>
      <StartTime>%s</StartTime>
      <StatusCode>InProgress</StatusCode>
      <Progress>0</Progress>
      <Details>{"Subnet ID":"subnet-0a1b2c3d","Availability Zone":"%s"}</Details>
    </Activity>
  </TerminateInstanceInAutoScalingGroupResult>
  <ResponseMetadata>
    <RequestId>{{RequestId}}</RequestId>
  </ResponseMetadata>
</TerminateInstanceInAutoScalingGroupResponse>
`, asNS, s.seq, s.seq, xmlEscape(g.name), id, xmlEscape(cause), isoTime(now), in.az), nil
}

type filter struct {
	name   string
	values []string
}

func ec2Filters(form url.Values) []filter {
	var out []filter
	for i := 1; ; i++ {
		name, ok := form[fmt.Sprintf("Filter.%d.Name", i)]
		if !ok {
			return out
		}
		out = append(out, filter{name: name[0], values: members(form, fmt.Sprintf("Filter.%d.Value", i))})
	}
}

func (in *instance) tags() [][2]string {
	t := [][2]string{{"Name", "ci-runner"}}
	// aws:autoscaling:groupName stays on the instance after it leaves.
	t = append(t, [2]string{"aws:autoscaling:groupName", in.launchGroup})
	if in.port > 0 {
		t = append(t, [2]string{SSHPortTag, strconv.Itoa(in.port)})
	}
	return t
}

func (in *instance) matches(f filter) bool {
	switch {
	case f.name == "instance-id":
		return slices.Contains(f.values, in.id)
	case f.name == "instance-state-name":
		return slices.Contains(f.values, in.ec2State)
	case strings.HasPrefix(f.name, "tag:"):
		key := strings.TrimPrefix(f.name, "tag:")
		for _, t := range in.tags() {
			if t[0] == key && slices.Contains(f.values, t[1]) {
				return true
			}
		}
		return false
	}
	return false
}

var stateCodes = map[string]int{"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}

func (s *Server) describeInstances(form url.Values) (string, *apiError) {
	ids := members(form, "InstanceId")
	filters := ec2Filters(form)
	for _, f := range filters {
		if f.name != "instance-id" && f.name != "instance-state-name" && !strings.HasPrefix(f.name, "tag:") {
			return "", &apiError{status: 400, code: "InvalidParameterValue", msg: fmt.Sprintf("The filter '%s' is invalid (awstest supports instance-id, instance-state-name, tag:<key>)", f.name)}
		}
	}
	maxResults := 0
	if v := form.Get("MaxResults"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 5 || n > 1000 {
			return "", &apiError{status: 400, code: "InvalidParameterValue", msg: fmt.Sprintf("Value ( %s ) for parameter maxResults is invalid. Expecting a value between 5 and 1000.", v)}
		}
		if len(ids) > 0 {
			return "", &apiError{status: 400, code: "InvalidParameterCombination", msg: "The parameter instancesSet cannot be used with the parameter maxResults"}
		}
		maxResults = n
	}
	for _, id := range ids {
		if !strings.HasPrefix(id, "i-") {
			return "", &apiError{status: 400, code: "InvalidInstanceID.Malformed", msg: fmt.Sprintf("Invalid id: \"%s\"", id)}
		}
		if in := s.instances[id]; in == nil || in.hidden > 0 {
			if in != nil {
				in.hidden--
			}
			return "", &apiError{status: 400, code: "InvalidInstanceID.NotFound", msg: fmt.Sprintf("The instance ID '%s' does not exist", id)}
		}
	}
	start := 0
	if tok := form.Get("NextToken"); tok != "" {
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		n, err2 := strconv.Atoi(strings.TrimPrefix(string(raw), "awstest:"))
		if err != nil || err2 != nil {
			return "", &apiError{status: 400, code: "InvalidParameterValue", msg: "Invalid value for nextToken"}
		}
		start = n
	}
	var sel []*instance
	for _, id := range s.order {
		in := s.instances[id]
		if len(ids) > 0 && !slices.Contains(ids, id) {
			continue
		}
		ok := true
		for _, f := range filters {
			if !in.matches(f) {
				ok = false
				break
			}
		}
		if ok {
			sel = append(sel, in)
		}
	}
	next := ""
	if start > len(sel) {
		start = len(sel)
	}
	sel = sel[start:]
	if maxResults > 0 && len(sel) > maxResults {
		sel = sel[:maxResults]
		next = base64.RawURLEncoding.EncodeToString([]byte("awstest:" + strconv.Itoa(start+maxResults)))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="%s">
    <requestId>{{RequestId}}</requestId>
    <reservationSet>
`, ec2NS)
	for _, in := range sel {
		if in.hidden > 0 {
			in.hidden--
			continue
		}
		s.writeInstance(&b, in)
	}
	b.WriteString("    </reservationSet>\n")
	if next != "" {
		fmt.Fprintf(&b, "    <nextToken>%s</nextToken>\n", next)
	}
	b.WriteString("</DescribeInstancesResponse>\n")
	return b.String(), nil
}

func (s *Server) writeInstance(b *strings.Builder, in *instance) {
	fmt.Fprintf(b, `        <item>
            <reservationId>r-%s</reservationId>
            <ownerId>123456789012</ownerId>
            <requesterId>226008221399</requesterId>
            <groupSet/>
            <instancesSet>
                <item>
                    <instanceId>%s</instanceId>
                    <imageId>ami-0abcdef1234567890</imageId>
                    <instanceState>
                        <code>%d</code>
                        <name>%s</name>
                    </instanceState>
                    <privateDnsName>ip-%s.ec2.internal</privateDnsName>
                    <dnsName/>
                    <reason/>
                    <amiLaunchIndex>0</amiLaunchIndex>
                    <productCodes/>
                    <instanceType>t3.medium</instanceType>
                    <launchTime>%s</launchTime>
                    <placement>
                        <availabilityZone>%s</availabilityZone>
                        <groupName/>
                        <tenancy>default</tenancy>
                    </placement>
                    <monitoring>
                        <state>disabled</state>
                    </monitoring>
                    <subnetId>subnet-0a1b2c3d</subnetId>
                    <vpcId>vpc-1a2b3c4d</vpcId>
`, strings.TrimPrefix(in.id, "i-"), in.id, stateCodes[in.ec2State], in.ec2State,
		strings.ReplaceAll(in.privateIP, ".", "-"), isoTime(in.launched), in.az)
	if in.ec2State != "terminated" {
		fmt.Fprintf(b, "                    <privateIpAddress>%s</privateIpAddress>\n", in.privateIP)
		if in.publicIP != "" {
			fmt.Fprintf(b, "                    <ipAddress>%s</ipAddress>\n", in.publicIP)
		}
	}
	if in.platform == "windows" {
		b.WriteString("                    <platform>windows</platform>\n")
	}
	platformDetails := "Linux/UNIX"
	if in.platform == "windows" {
		platformDetails = "Windows"
	}
	fmt.Fprintf(b, `                    <architecture>%s</architecture>
                    <rootDeviceType>ebs</rootDeviceType>
                    <rootDeviceName>/dev/xvda</rootDeviceName>
                    <virtualizationType>hvm</virtualizationType>
                    <clientToken>%s</clientToken>
                    <tagSet>
`, in.arch, strings.TrimPrefix(in.id, "i-"))
	for _, t := range in.tags() {
		fmt.Fprintf(b, `                        <item>
                            <key>%s</key>
                            <value>%s</value>
                        </item>
`, xmlEscape(t[0]), xmlEscape(t[1]))
	}
	fmt.Fprintf(b, `                    </tagSet>
                    <hypervisor>xen</hypervisor>
                    <platformDetails>%s</platformDetails>
                    <usageOperation>RunInstances</usageOperation>
                </item>
            </instancesSet>
        </item>
`, platformDetails)
}

// serveJSON answers EC2 Instance Connect (JSON 1.1 protocol).
func (s *Server) serveJSON(w http.ResponseWriter, r *http.Request, target string) {
	action := strings.TrimPrefix(target, "AWSEC2InstanceConnectService.")
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.counts[action]++
	s.advanceLocked()
	f := s.fault(action, svcConnect)
	if f == nil && action != "SendSSHPublicKey" {
		f = &apiError{status: 400, code: "UnknownOperationException", msg: "awstest implements only SendSSHPublicKey of EC2 Instance Connect"}
	}
	var req struct {
		InstanceID       string `json:"InstanceId"`
		InstanceOSUser   string `json:"InstanceOSUser"`
		SSHPublicKey     string `json:"SSHPublicKey"`
		AvailabilityZone string `json:"AvailabilityZone"`
	}
	if f == nil {
		if err := json.Unmarshal(body, &req); err != nil {
			f = &apiError{status: 400, code: "SerializationException", msg: err.Error()}
		}
	}
	if f == nil {
		in := s.instances[req.InstanceID]
		switch {
		case in == nil:
			f = &apiError{status: 400, code: "EC2InstanceNotFoundException", msg: "Instance not found"}
		case in.ec2State != "running":
			f = &apiError{status: 400, code: "EC2InstanceStateInvalidException", msg: "Instance is not in a valid state for EC2 Instance Connect"}
		case req.InstanceOSUser == "" || !strings.HasPrefix(req.SSHPublicKey, "ssh-"):
			f = &apiError{status: 400, code: "InvalidArgsException", msg: "InstanceOSUser and an OpenSSH-format SSHPublicKey are required"}
		case req.AvailabilityZone != "" && req.AvailabilityZone != in.az:
			f = &apiError{status: 400, code: "InvalidArgsException", msg: "Availability Zone does not match the instance"}
		default:
			s.pushed[req.InstanceID] = append(s.pushed[req.InstanceID], PushedKey{User: req.InstanceOSUser, Key: strings.TrimSpace(req.SSHPublicKey), At: s.opts.Now()})
		}
	}
	reqID := s.requestID()
	s.mu.Unlock()
	if f != nil {
		f.write(w, svcConnect)
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("x-amzn-RequestId", reqID)
	fmt.Fprintf(w, `{"RequestId":%q,"Success":true}`, reqID)
}
