// Package execmode implements `instance-runner exec`: it runs the jobs of a
// local .gitlab-ci.yml stage by stage through the whole real path — an
// in-process GitLab jobs API on loopback (gitlabtest), the daemon with its
// taskscaler and provider, SSH to the instances — while serving the
// current git repository's HEAD so that jobs clone it as on GitLab. It
// prints each job's live trace, a progress line per job and a summary
// table.
package execmode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/fleetwright/taskscaler/internal/config"
	"github.com/fleetwright/taskscaler/internal/daemon"
	"github.com/fleetwright/taskscaler/internal/gitlab"
	"github.com/fleetwright/taskscaler/internal/gitlab/gitlabtest"
	"github.com/fleetwright/taskscaler/internal/pipeline"
	"github.com/fleetwright/taskscaler/taskscaler"
)

// Defaults of the generated config used without --config: the local
// provider with 2 slots per instance and at most 4 instances.
const (
	DefaultCapacityPerInstance = 2
	DefaultMaxInstances        = 4
)

// MinMaskedLength is the shortest value GitLab accepts for a masked
// variable, in characters; exec warns about shorter --secret values.
const MinMaskedLength = 8

// Options configure Run.
type Options struct {
	// Dir is the directory whose git repository is served; "" = the
	// current directory.
	Dir string
	// File is the pipeline file; "" = .gitlab-ci.yml at the top of the
	// repository (or in Dir without a repository).
	File string
	// ConfigPath is a config.toml whose runners run the jobs; "" = the
	// generated local-provider config. Its url and token are replaced by
	// the in-process GitLab's.
	ConfigPath string
	// Jobs names the jobs to run; empty = all.
	Jobs []string
	// Listen is where the in-process GitLab and git server listen;
	// "" = "127.0.0.1:0". Instances must reach it.
	Listen string
	// Stdout receives traces, progress lines and the summary; Stderr
	// warnings.
	Stdout, Stderr io.Writer
	// Logger receives the daemon's logs; nil = warnings and errors on
	// Stderr.
	Logger *zap.Logger
	// Version is reported as the runner version.
	Version string
	// InstanceDir is where local instances live; "" = a temp directory
	// removed at the end.
	InstanceDir string
	// TracePoll is how often live trace output is printed; 0 = 200 ms.
	TracePoll time.Duration
	// Color keeps the trace's ANSI colours in the output (for a
	// terminal); false strips them. GitLab's section markers are always
	// stripped.
	Color bool
	// Variables are added to every job after the file's variables, like a
	// project's CI/CD variables (--env, --secret); masked ones never appear
	// in the output.
	Variables []gitlab.Variable
	// ScalerOptions are passed to the daemon (tests).
	ScalerOptions []taskscaler.Option
	// Abort, when closed (a second Ctrl-C, after ctx was cancelled), aborts
	// every job at once: after_script does not run (or is stopped), then
	// the instances are deleted and Run returns. nil = never.
	Abort <-chan struct{}
	// OnEvent, when set, is called for every daemon job event after exec's
	// own handling, from the job's goroutine (tests).
	OnEvent func(daemon.Event)
}

// Status of a job in the summary.
type Status string

// Job statuses.
const (
	StatusSuccess  Status = "success"
	StatusFailed   Status = "failed"
	StatusCanceled Status = "canceled"
	StatusSkipped  Status = "skipped"
	StatusManual   Status = "manual"
)

// JobResult is one row of the summary.
type JobResult struct {
	Name, Stage   string
	Status        Status
	AllowFailure  bool
	FailureReason string
	ExitCode      int
	Duration      time.Duration
	InstanceID    string
	// Trace is the job log as the server received it.
	Trace []byte
	// Note explains a skip.
	Note string
}

// Result is the outcome of a pipeline.
type Result struct {
	Jobs []JobResult
	// Success is false when a job without allow_failure failed.
	Success bool
}

type out struct {
	mu sync.Mutex
	w  io.Writer
}

func (o *out) printf(format string, args ...any) {
	o.mu.Lock()
	fmt.Fprintf(o.w, format, args...)
	o.mu.Unlock()
}

// Run runs the pipeline. It returns an error when the pipeline file, the
// config or the environment is unusable; job failures are in the Result.
// Cancelling ctx cancels running jobs (their after_script runs) and stops.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if opts.Stdout == nil {
		opts.Stdout = io.Discard
	}
	if opts.Stderr == nil {
		opts.Stderr = io.Discard
	}
	if opts.TracePoll <= 0 {
		opts.TracePoll = 200 * time.Millisecond
	}
	o := &out{w: opts.Stdout}
	dir := opts.Dir
	if dir == "" {
		dir = "."
	}
	tmp, err := os.MkdirTemp("", tempPrefix)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	release, err := claimTemp(tmp)
	if err != nil {
		return nil, err
	}
	defer release()
	sweepStaleAtStart(ctx, opts.Stderr)

	repo, err := OpenRepo(ctx, dir, tmp)
	if err != nil {
		if !errors.Is(err, ErrNotGitRepo) {
			return nil, err
		}
		fmt.Fprintf(opts.Stderr, "warning: %v: jobs run without a clone (GIT_STRATEGY=none); run exec inside a git repository to give jobs its HEAD\n", err)
		repo = nil
	}
	file := opts.File
	if file == "" {
		base := dir
		if repo != nil {
			base = repo.Root
		}
		file = filepath.Join(base, ".gitlab-ci.yml")
	}
	p, err := pipeline.ParseFile(file)
	if err != nil {
		return nil, err
	}
	for _, w := range p.Warnings {
		fmt.Fprintf(opts.Stderr, "warning: %s: %s\n", file, w)
	}
	selected, err := p.Select(opts.Jobs)
	if err != nil {
		return nil, err
	}
	for _, v := range opts.Variables {
		if v.Masked && len(v.Value) < MinMaskedLength {
			fmt.Fprintf(opts.Stderr, "warning: secret %s is shorter than %d characters: GitLab refuses to mask such values; exec masks every occurrence of it in the output anyway, which may hide unrelated text\n", v.Key, MinMaskedLength)
		}
	}
	if repo != nil && repo.Dirty {
		fmt.Fprintf(opts.Stderr, "warning: %s has uncommitted changes; jobs clone HEAD (%s) without them\n", repo.Root, repo.Sha[:8])
	}

	// The in-process GitLab and the git server share one loopback listener.
	runnerToken := "glrt-exec" + newJobToken()[9:25]
	// Trace every second (GitLab's pace while someone watches the job
	// log), so output is live and a cancel is seen within a second.
	srv := gitlabtest.New(gitlabtest.Options{RunnerToken: runnerToken, LongPoll: 5 * time.Second, TraceUpdateInterval: time.Second})
	defer srv.Close()
	mux := http.NewServeMux()
	if repo != nil {
		mux.Handle(repo.Path()+"/", repo)
	}
	mux.Handle("/", srv.Handler())
	listen := opts.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("listen for the in-process GitLab: %w", err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()
	serverURL := "http://" + ln.Addr().String()

	cfg, err := execConfig(opts, serverURL, runnerToken, tmp)
	if err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log, err = daemon.NewLogger("warn", "text")
		if err != nil {
			return nil, err
		}
	}
	tracker := newTracker()
	show := tracker.event(o)
	var d *daemon.Daemon
	onEvent := func(ev daemon.Event) {
		show(ev)
		if opts.OnEvent != nil {
			opts.OnEvent(ev)
		}
		// A job handed out after (or while) ctx ended never starts its
		// script; CancelJobs is idempotent.
		if ctx.Err() != nil {
			d.CancelJobs()
		}
	}
	d, err = daemon.New(ctx, cfg, daemon.Options{
		Logger: log, SystemID: "r_execlocal001", Version: opts.Version,
		ScalerOptions: opts.ScalerOptions, OnEvent: onEvent,
		Trace:          gitlab.TraceOptions{UpdateInterval: time.Second, KeepAlive: time.Second},
		NoStateStorage: true, // a one-shot run resumes nothing
	})
	if err != nil {
		return nil, err
	}
	// exec runs GitLab and the daemon in one process: cancelling ctx
	// (Ctrl-C) cancels the running jobs locally at once instead of waiting
	// for each job to see `Job-Status: canceling` at its next trace update.
	stopCancelWatch := context.AfterFunc(ctx, d.CancelJobs)
	defer stopCancelWatch()
	dctx, stopDaemon := context.WithCancel(context.WithoutCancel(ctx))
	daemonDone := make(chan error, 1)
	go func() { daemonDone <- d.Run(dctx) }()
	stop := func() error {
		stopDaemon()
		return <-daemonDone
	}
	aborts, stopAborts := newAborter(opts.Abort, srv, o)
	defer stopAborts()

	name := "project"
	if repo != nil {
		name = sanitize(repo.Name)
	}
	proj := Project{ServerURL: serverURL, Repo: repo, Name: name, PipelineID: 1}
	o.printf("Running %d job(s) of %s on %s (%s)\n", len(selected), file, runnerSummary(cfg), serverURL)

	res := &Result{Success: true}
	failed := false // a job of an earlier stage failed (not allow_failure)
	var nextID int64 = 1
	for _, stage := range p.ByStage(selected) {
		if ctx.Err() != nil {
			break
		}
		o.printf("\n== stage %s ==\n", stage[0].Stage)
		var wg sync.WaitGroup
		results := make([]JobResult, len(stage))
		for i, j := range stage {
			results[i] = JobResult{Name: j.Name, Stage: j.Stage, AllowFailure: j.AllowFailure}
			run, status, note := decide(j, failed, slices.Contains(opts.Jobs, j.Name))
			if !run {
				results[i].Status, results[i].Note = status, note
				o.printf("[%s] %s: %s\n", j.Name, status, note)
				continue
			}
			id := nextID
			nextID++
			token := newJobToken()
			if repo != nil {
				repo.Allow(token)
			}
			srv.AddJob(Payload(p, j, proj, id, token, opts.Variables))
			aborts.add(id)
			wg.Go(func() { results[i] = follow(ctx, srv, o, tracker, j, id, opts.TracePoll, opts.Color) })
		}
		wg.Wait()
		for _, r := range results {
			if (r.Status == StatusFailed || r.Status == StatusCanceled) && !r.AllowFailure {
				failed = true
				res.Success = false
			}
		}
		res.Jobs = append(res.Jobs, results...)
	}
	if ctx.Err() != nil {
		res.Success = false
	}
	o.printf("\n")
	PrintSummary(opts.Stdout, res)
	o.printf("Stopping: deleting instances...\n")
	if err := stop(); err != nil {
		fmt.Fprintf(opts.Stderr, "warning: shutdown: %v\n", err)
	}
	return res, nil
}

// decide says whether job j runs given whether an earlier stage failed;
// named is true when the job was named on the command line (which runs a
// manual job, as pressing its play button).
func decide(j *pipeline.Job, failed, named bool) (bool, Status, string) {
	switch j.When {
	case pipeline.Manual:
		if named && !failed {
			return true, "", ""
		}
		if named {
			return false, StatusSkipped, "an earlier stage failed"
		}
		return false, StatusManual, "when: manual jobs are not run by exec; run it by name: instance-runner exec " + j.Name
	case pipeline.Never:
		return false, StatusSkipped, "when: never"
	case pipeline.Always:
		return true, "", ""
	case pipeline.OnFailure:
		if !failed {
			return false, StatusSkipped, "when: on_failure and no earlier job failed"
		}
		return true, "", ""
	}
	if failed {
		return false, StatusSkipped, "an earlier stage failed"
	}
	return true, "", ""
}

func runnerSummary(cfg *config.Config) string {
	var parts []string
	for _, r := range cfg.Runners {
		a := r.Autoscaler
		parts = append(parts, fmt.Sprintf("runner %q: %s provider, %d slot(s) per instance, at most %s instance(s)",
			r.Name, a.Provider, a.CapacityPerInstance, unlimited(a.MaxInstances)))
	}
	return strings.Join(parts, "; ")
}

func unlimited(n int) string {
	if n == 0 {
		return "unlimited"
	}
	return fmt.Sprint(n)
}

// execConfig builds the daemon config: the generated local one, or the
// user's with the in-process GitLab's url and token.
func execConfig(opts Options, url, token, tmp string) (*config.Config, error) {
	if opts.ConfigPath != "" {
		cfg, warns, err := config.Load(opts.ConfigPath)
		if err != nil {
			return nil, err
		}
		for _, w := range warns {
			fmt.Fprintf(opts.Stderr, "warning: %s\n", w.String())
		}
		for i := range cfg.Runners {
			cfg.Runners[i].URL, cfg.Runners[i].Token = url, token
			// exec is a one-shot command: it never leaves instances
			// behind.
			cfg.Runners[i].Autoscaler.DeleteInstancesOnShutdown = true
			if cfg.Runners[i].Autoscaler.Provider != "local" && loopback(opts.Listen) {
				fmt.Fprintf(opts.Stderr, "warning: runner %q uses the %s provider: its instances must reach %s to fetch jobs' sources; use --listen with an address they can reach\n",
					cfg.Runners[i].Name, cfg.Runners[i].Autoscaler.Provider, url)
			}
		}
		return cfg, nil
	}
	dir := opts.InstanceDir
	if dir == "" {
		dir = filepath.Join(tmp, "instances")
	}
	toml := fmt.Sprintf(`concurrent = %[1]d
check_interval = 1
shutdown_timeout = 30
[[runners]]
  name = "exec"
  url = %[2]q
  token = %[3]q
  executor = "instance"
  request_concurrency = 4
  [runners.autoscaler]
    plugin = "local"
    capacity_per_instance = %[4]d
    max_instances = %[5]d
    instance_acquire_timeout = "2m"
    update_interval = "10s"
    update_interval_when_expecting = "200ms"
    shutdown_deletion_interval = "500ms"
    delete_instances_on_shutdown = true
    [runners.autoscaler.plugin_config]
      dir = %[6]q
    [[runners.autoscaler.policy]]
      idle_count = 0
      idle_time = "1m"
`, DefaultCapacityPerInstance*DefaultMaxInstances, url, token, DefaultCapacityPerInstance, DefaultMaxInstances, dir)
	cfg, _, err := config.Parse(filepath.Join(tmp, "exec-config.toml"), []byte(toml))
	if err != nil {
		return nil, fmt.Errorf("generated exec config: %w", err)
	}
	return cfg, nil
}

func loopback(listen string) bool {
	return listen == "" || strings.HasPrefix(listen, "127.") || strings.HasPrefix(listen, "localhost:") || strings.HasPrefix(listen, "[::1]")
}

// tracker remembers which instance each job ran on.
type tracker struct {
	mu       sync.Mutex
	instance map[int64]string
}

func newTracker() *tracker { return &tracker{instance: map[int64]string{}} }

func (t *tracker) event(o *out) func(daemon.Event) {
	return func(ev daemon.Event) {
		switch ev.Kind {
		case daemon.EventStarted:
			t.mu.Lock()
			t.instance[ev.JobID] = ev.InstanceID
			t.mu.Unlock()
			o.printf("[%s] running on instance %s, slot %d\n", ev.JobName, ev.InstanceID, ev.Slot)
		case daemon.EventReceived:
			o.printf("[%s] picked up by the runner, waiting for a slot\n", ev.JobName)
		}
	}
}

func (t *tracker) instanceOf(id int64) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.instance[id]
}

// follow prints job id's trace as it arrives and returns its result.
func follow(ctx context.Context, srv *gitlabtest.Server, o *out, t *tracker, j *pipeline.Job, id int64, poll time.Duration, color bool) JobResult {
	start := time.Now()
	prefix := "[" + j.Name + "] "
	printed := 0
	var partial []byte
	flush := func(trace []byte, final bool) {
		if len(trace) > printed {
			partial = append(partial, trace[printed:]...)
			printed = len(trace)
		}
		for {
			i := bytes.IndexByte(partial, '\n')
			if i < 0 {
				break
			}
			o.printf("%s%s\n", prefix, display(partial[:i], color))
			partial = partial[i+1:]
		}
		if final && len(partial) > 0 {
			o.printf("%s%s\n", prefix, display(partial, color))
			partial = nil
		}
	}
	done := make(chan struct{})
	var rec gitlabtest.JobRecord
	go func() {
		defer close(done)
		rec, _ = srv.WaitJob(context.WithoutCancel(ctx), id)
	}()
	tick := time.NewTicker(poll)
	defer tick.Stop()
	canceled := false
	for {
		select {
		case <-done:
			flush(rec.Trace, true)
			r := JobResult{Name: j.Name, Stage: j.Stage, AllowFailure: j.AllowFailure, Duration: time.Since(start),
				InstanceID: t.instanceOf(id), Trace: rec.Trace, FailureReason: string(rec.FailureReason), ExitCode: rec.ExitCode}
			switch {
			case rec.State == "success":
				r.Status = StatusSuccess
			case canceled || rec.State == "canceled":
				r.Status = StatusCanceled
			default:
				r.Status = StatusFailed
			}
			mark := "✔"
			if r.Status != StatusSuccess {
				mark = "✘"
			}
			detail := ""
			if r.FailureReason != "" {
				detail = fmt.Sprintf(" (%s, exit code %d)", r.FailureReason, r.ExitCode)
			}
			if r.Status == StatusFailed && r.AllowFailure {
				detail += " (allowed to fail)"
			}
			o.printf("%s%s %s%s in %s\n", prefix, mark, r.Status, detail, r.Duration.Round(10*time.Millisecond))
			return r
		case <-tick.C:
			flush(srv.Job(id).Trace, false)
		case <-ctx.Done():
			if !canceled {
				canceled = true
				srv.Cancel(id)
				o.printf("%scanceling (a started script is stopped and after_script runs; a job not yet in its script never starts it)\n", prefix)
			}
			ctx = context.WithoutCancel(ctx)
		}
	}
}

var (
	sectionMarker = regexp.MustCompile(`section_(?:start|end):[0-9]+:[^\x1b\r\n]*\r?\x1b\[0K`)
	ansiEscape    = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)
)

// display turns one trace line into terminal output: GitLab's collapsible
// section markers are removed, colours too unless color is set, and a
// carriage return keeps only what follows it (progress bars).
func display(line []byte, color bool) []byte {
	line = sectionMarker.ReplaceAll(line, nil)
	if !color {
		line = ansiEscape.ReplaceAll(line, nil)
	}
	if i := bytes.LastIndexByte(bytes.TrimRight(line, "\r"), '\r'); i >= 0 {
		line = line[i+1:]
	}
	return bytes.TrimRight(line, "\r")
}

// PrintSummary writes the summary table: job, stage, status, duration and
// instance.
func PrintSummary(w io.Writer, res *Result) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tSTAGE\tSTATUS\tDURATION\tINSTANCE")
	for _, j := range res.Jobs {
		st := string(j.Status)
		if j.FailureReason != "" && j.Status != StatusSuccess {
			st += " (" + j.FailureReason + ")"
		}
		if j.AllowFailure && j.Status == StatusFailed {
			st += " [allowed]"
		}
		dur := "-"
		if j.Duration > 0 {
			dur = j.Duration.Round(10 * time.Millisecond).String()
		}
		inst := j.InstanceID
		if inst == "" {
			inst = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", j.Name, j.Stage, st, dur, inst)
	}
	_ = tw.Flush()
	if res.Success {
		fmt.Fprintln(w, "Pipeline succeeded.")
	} else {
		fmt.Fprintln(w, "Pipeline failed.")
	}
}
