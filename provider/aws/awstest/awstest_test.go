package awstest

import (
	"encoding/xml"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func post(t *testing.T, s *Server, form url.Values) (int, string) {
	t.Helper()
	resp, err := http.Post(s.URL(), "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func TestPagingAndFilters(t *testing.T) {
	s := New(Options{})
	defer s.Close()
	s.CreateGroup("g", 0, 20, 12)
	s.CreateGroup("other", 0, 5, 3)
	seen := map[string]bool{}
	token := ""
	pages := 0
	for {
		f := url.Values{"Action": {"DescribeInstances"}, "MaxResults": {"5"},
			"Filter.1.Name": {"tag:aws:autoscaling:groupName"}, "Filter.1.Value.1": {"g"}}
		if token != "" {
			f.Set("NextToken", token)
		}
		code, body := post(t, s, f)
		if code != 200 {
			t.Fatalf("status %d: %s", code, body)
		}
		var r struct {
			IDs   []string `xml:"reservationSet>item>instancesSet>item>instanceId"`
			Token string   `xml:"nextToken"`
		}
		if err := xml.Unmarshal([]byte(body), &r); err != nil {
			t.Fatal(err)
		}
		for _, id := range r.IDs {
			if seen[id] {
				t.Fatalf("instance %s on two pages", id)
			}
			seen[id] = true
		}
		pages++
		if token = r.Token; token == "" {
			break
		}
	}
	if len(seen) != 12 || pages != 3 {
		t.Fatalf("%d instances in %d pages; want 12 in 3", len(seen), pages)
	}
	if n := s.CallCounts()["DescribeInstances"]; n != 3 {
		t.Fatalf("CallCounts DescribeInstances = %d", n)
	}
	code, body := post(t, s, url.Values{"Action": {"DescribeInstances"}, "MaxResults": {"5"}, "InstanceId.1": {"i-1"}})
	if code != 400 || !strings.Contains(body, "<Code>InvalidParameterCombination</Code>") || !strings.Contains(body, "<Response><Errors><Error>") {
		t.Fatalf("MaxResults with InstanceId: %d %s; want EC2's InvalidParameterCombination error document", code, body)
	}
}

func TestAutoScalingErrorsAndLimits(t *testing.T) {
	s := New(Options{})
	defer s.Close()
	s.CreateGroup("g", 0, 3, 0)
	code, body := post(t, s, url.Values{"Action": {"SetDesiredCapacity"}, "AutoScalingGroupName": {"g"}, "DesiredCapacity": {"4"}})
	if code != 400 || !strings.Contains(body, "<Type>Sender</Type>") || !strings.Contains(body, "<Code>ValidationError</Code>") || !strings.Contains(body, "above max value 3") {
		t.Fatalf("desired above max: %d %s", code, body)
	}
	code, body = post(t, s, url.Values{"Action": {"TerminateInstanceInAutoScalingGroup"}, "InstanceId": {"i-0000000000000000"}, "ShouldDecrementDesiredCapacity": {"true"}})
	if code != 400 || !strings.Contains(body, "No managed instance found") {
		t.Fatalf("terminate unknown: %d %s", code, body)
	}
	s.FailNext("DescribeAutoScalingGroups", "AccessDenied", 403, "not authorized", 1)
	code, body = post(t, s, url.Values{"Action": {"DescribeAutoScalingGroups"}})
	if code != 403 || !strings.Contains(body, "<ErrorResponse") || !strings.Contains(body, "<Code>AccessDenied</Code>") {
		t.Fatalf("injected AccessDenied: %d %s", code, body)
	}
	if code, _ = post(t, s, url.Values{"Action": {"DescribeAutoScalingGroups"}}); code != 200 {
		t.Fatalf("FailNext(…, 1) failed more than one request")
	}
	code, body = post(t, s, url.Values{"Action": {"RunInstances"}})
	if code != 400 || !strings.Contains(body, "InvalidAction") {
		t.Fatalf("unknown action: %d %s", code, body)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("CreateGroup with desired > max did not panic")
		}
	}()
	s.CreateGroup("bad", 0, 1, 2)
}

func TestSimulation(t *testing.T) {
	c := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := New(Options{Now: c.Now, BootDelay: 30 * time.Second, TerminateDelay: 10 * time.Second, ReclaimDetectDelay: time.Minute})
	defer s.Close()
	s.CreateGroup("g", 0, 5, 2)
	st, _ := s.Group("g")
	var ids []string
	for id, lc := range st.Instances {
		if lc != LifecyclePending {
			t.Fatalf("%s is %s right after launch; want Pending", id, lc)
		}
		ids = append(ids, id)
	}
	c.now = c.now.Add(30 * time.Second)
	st, _ = s.Group("g")
	for _, id := range ids {
		if st.Instances[id] != LifecycleInService || s.EC2State(id) != "running" {
			t.Fatalf("%s is %s/%s after the boot delay", id, st.Instances[id], s.EC2State(id))
		}
	}
	// Protected instances survive a lower desired capacity.
	s.SetDesiredBehindOurBack("g", 0)
	if st, _ = s.Group("g"); len(st.Instances) != 2 {
		t.Fatalf("protected instances were scaled in: %v", st.Instances)
	}
	// Unprotected ones do not.
	s.SetDesiredBehindOurBack("g", 2)
	s.SetProtection("g", false)
	s.SetDesiredBehindOurBack("g", 3) // launches one unprotected instance
	s.SetDesiredBehindOurBack("g", 2)
	if st, _ = s.Group("g"); len(st.Instances) != 3 {
		t.Fatalf("want the unprotected instance terminating, got %v", st.Instances)
	}
	c.now = c.now.Add(10 * time.Second)
	if st, _ = s.Group("g"); len(st.Instances) != 2 {
		t.Fatalf("want the unprotected instance gone after the terminate delay: %v", st.Instances)
	}
	// Spot reclaim: EC2 first, Auto Scaling after its detection delay,
	// then a replacement.
	s.Reclaim(ids[0])
	if s.EC2State(ids[0]) != "shutting-down" {
		t.Fatalf("reclaimed instance EC2 state %s", s.EC2State(ids[0]))
	}
	if st, _ = s.Group("g"); st.Instances[ids[0]] != LifecycleInService {
		t.Fatalf("Auto Scaling noticed the reclaim before its detection delay: %v", st.Instances)
	}
	c.now = c.now.Add(time.Minute + 10*time.Second)
	st, _ = s.Group("g")
	if _, ok := st.Instances[ids[0]]; ok || len(st.Instances) != 2 || st.Desired != 2 {
		t.Fatalf("after reclaim: %+v; want the instance replaced, desired unchanged", st)
	}
}

func TestSeededFaultsAreDeterministic(t *testing.T) {
	run := func() []int {
		s := New(Options{Seed: 9, ThrottleRate: 0.3})
		defer s.Close()
		s.CreateGroup("g", 0, 1, 0)
		var codes []int
		for range 30 {
			code, _ := post(t, s, url.Values{"Action": {"DescribeAutoScalingGroups"}})
			codes = append(codes, code)
		}
		return codes
	}
	a, b := run(), run()
	throttled := 0
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("request %d: %d vs %d with the same seed", i, a[i], b[i])
		}
		if a[i] == 400 {
			throttled++
		}
	}
	if throttled == 0 || throttled == len(a) {
		t.Fatalf("%d of %d requests throttled at rate 0.3", throttled, len(a))
	}
}
