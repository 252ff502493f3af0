package jobexec

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"path"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/fleetwright/taskscaler/internal/gitlab"
)

// ANSI colours as GitLab Runner's trace uses them.
const (
	ansiBoldGreen = "\x1b[32;1m"
	ansiBoldRed   = "\x1b[31;1m"
	ansiYellow    = "\x1b[0;33m"
	ansiBoldCyan  = "\x1b[36;1m"
	ansiReset     = "\x1b[0;m"
)

// BootstrapCommand is the command every stage runs on the instance (through
// the login shell of the SSH user). It needs bash on the instance and reads
// the stage script from standard input, so that no variable value shows in
// the process list. The first line of the input is read by bash itself and
// slurps the rest up to an end line (with `sed`), so commands of the job
// never read the script as their input. The input stays open after the
// script while the stage runs: its EOF tells the stage wrapper to stop the
// stage (see Runner).
//
// bash runs as a login shell, as GitLab Runner's, so that /etc/profile and
// ~/.bash_profile set up the instance's tools; directories of the SSH
// session's PATH that the profile dropped are appended again.
const BootstrapCommand = `if command -v bash >/dev/null 2>&1; then export __IR_SESSION_PATH="$PATH"; exec bash --login -s; fi; echo "ERROR: bash is not installed on this instance; instance-runner needs bash (3.2 or later) in PATH" >&2; exit 127`

// keepSessionPath appends the directories of the session's PATH that the
// login profile removed (Debian's /etc/profile resets PATH).
const keepSessionPath = `__ir_rest="${__IR_SESSION_PATH-}"
while [ -n "$__ir_rest" ]; do
  __ir_d="${__ir_rest%%:*}"
  case "$__ir_rest" in *:*) __ir_rest="${__ir_rest#*:}" ;; *) __ir_rest= ;; esac
  case ":$PATH:" in *":$__ir_d:"*) ;; *) [ -n "$__ir_d" ] && PATH="${PATH:+$PATH:}$__ir_d" ;; esac
done
unset __IR_SESSION_PATH __ir_rest __ir_d
export PATH
`

// shellOnly names the variables the runner sets on the instance (their
// values exist only there): a reference to them is left to the shell, and
// job variables or environment entries of the same name are ignored.
var shellOnly = map[string]bool{
	"CI_BUILDS_DIR": true, "CI_PROJECT_DIR": true, "CI_CONCURRENT_ID": true,
	"CI_CONCURRENT_PROJECT_ID": true, "CI_JOB_STATUS": true,
}

// plan is everything about a job that is the same for all its stages.
type plan struct {
	job         *gitlab.Job
	buildsDir   word // CI_BUILDS_DIR
	projectRel  string
	prelude     string // exports and file variables, before CI_JOB_STATUS
	dirs        string // exports of CI_BUILDS_DIR and CI_PROJECT_DIR only
	warnings    []string
	vars        map[string]string // final literal values, for runner-side switches
	script      *gitlab.Step
	afterScript *gitlab.Step
	repoURL     string // without credentials
	// authBase and authPrefix are the server's root URL with and without
	// the credentials of repo_url ("" when it has none): git rewrites
	// every URL of that server (the project and its submodules on the same
	// GitLab) to carry the job token.
	authBase, authPrefix string
}

// newPlan checks the job payload and prepares the variables. A returned
// error is a bad payload or configuration: the job fails with
// runner_system_failure and the error as the trace line.
func newPlan(o *Options) (*plan, error) {
	j := o.Job
	p := &plan{job: j}
	for i := range j.Steps {
		s := &j.Steps[i]
		switch s.Name {
		case gitlab.StepScript:
			p.script = s
		case gitlab.StepAfterScript:
			p.afterScript = s
		case gitlab.StepRelease:
			return nil, fmt.Errorf("the job has a release step (the release keyword), which instance-runner does not support; use the release-cli in a script step instead")
		default:
			return nil, fmt.Errorf("the job has a step named %q, which instance-runner does not know; only script and after_script steps are supported", s.Name)
		}
	}
	if p.script == nil {
		return nil, fmt.Errorf("the job payload has no script step; GitLab sends one for every job, so the payload is malformed")
	}
	if len(p.script.Script) == 0 {
		return nil, fmt.Errorf("the job's script step has no commands")
	}
	if o.Slot < 0 {
		return nil, fmt.Errorf("slot %d is negative; slots are numbered from 0 (internal error)", o.Slot)
	}
	rel, err := projectPath(j)
	if err != nil {
		return nil, err
	}
	p.projectRel = rel
	switch sh := o.Shell; sh {
	case "", "bash", "sh":
	default:
		return nil, fmt.Errorf("runner shell %q is not supported by the instance executor of instance-runner; set shell = \"bash\" (jobs need bash on the instance)", sh)
	}
	bd := o.BuildsDir
	switch {
	case bd == "":
		p.buildsDir = word{{ref: "HOME"}, {lit: "/builds"}}
	case bd == "~":
		p.buildsDir = word{{ref: "HOME"}}
	case strings.HasPrefix(bd, "~/"):
		p.buildsDir = word{{ref: "HOME"}, {lit: "/" + strings.TrimRight(bd[2:], "/")}}
	case strings.HasPrefix(bd, "/"):
		p.buildsDir = lit(path.Clean(bd))
	default:
		p.buildsDir = word{{ref: "HOME"}, {lit: "/" + path.Clean(bd)}}
	}
	if strings.ContainsAny(bd, "\n\x00") {
		return nil, fmt.Errorf("builds_dir %q contains a newline or NUL byte", bd)
	}
	if u, err := url.Parse(j.GitInfo.RepoURL); err == nil && u.User != nil && u.Host != "" {
		root := url.URL{Scheme: u.Scheme, User: u.User, Host: u.Host, Path: "/"}
		p.authBase = root.String()
		root.User = nil
		p.authPrefix = root.String()
		u.User = nil
		p.repoURL = u.String()
	} else {
		p.repoURL = j.GitInfo.RepoURL
	}
	p.buildVariables(o)
	if v, ok := p.vars["GET_SOURCES_ATTEMPTS"]; ok && v != "" && p.getSourcesAttempts() == 1 && v != "1" {
		p.warnings = append(p.warnings, fmt.Sprintf("ignoring GET_SOURCES_ATTEMPTS %q: want a number from 1 to 10", v))
	}
	if v, ok := p.vars["RUNNER_SCRIPT_TIMEOUT"]; ok && v != "" && p.scriptTimeout() == 0 {
		p.warnings = append(p.warnings, fmt.Sprintf("ignoring RUNNER_SCRIPT_TIMEOUT %q: want a duration such as 30m", v))
	}
	if p.debugTracing() {
		p.warnings = append(p.warnings, "CI_DEBUG_TRACE is enabled: every command of script and after_script is traced with its expanded arguments; masked values stay masked, other values are shown")
	}
	if len(j.Artifacts) > 0 {
		p.warnings = append(p.warnings, "the job defines artifacts; instance-runner does not upload artifacts, they are skipped")
	}
	if len(j.Cache) > 0 {
		p.warnings = append(p.warnings, "the job defines a cache; instance-runner does not support caches, it is skipped")
	}
	if len(j.Dependencies) > 0 {
		p.warnings = append(p.warnings, "the job depends on artifacts of other jobs; instance-runner does not download artifacts, they are skipped")
	}
	if j.Image != nil && j.Image.Name != "" {
		p.warnings = append(p.warnings, fmt.Sprintf("the job asks for image %q; the instance executor runs jobs on the instance itself and ignores it", j.Image.Name))
	}
	if len(j.Services) > 0 {
		p.warnings = append(p.warnings, "the job asks for services; the instance executor does not start services, they are skipped")
	}
	return p, nil
}

// projectPath is the job directory below <builds_dir>/<slot>.
func projectPath(j *gitlab.Job) (string, error) {
	fp := j.JobInfo.ProjectFullPath
	if fp == "" {
		return "project-" + strconv.FormatInt(j.JobInfo.ProjectID, 10), nil
	}
	if strings.ContainsAny(fp, "\n\x00\\") || strings.HasPrefix(fp, "/") {
		return "", fmt.Errorf("job_info.project_full_path %q is not a relative project path", fp)
	}
	for _, part := range strings.Split(fp, "/") {
		if part == "" || part == "." || part == ".." {
			return "", fmt.Errorf("job_info.project_full_path %q is not a clean relative path", fp)
		}
	}
	return fp, nil
}

// buildVariables computes the exports shared by all stages.
func (p *plan) buildVariables(o *Options) {
	j := p.job
	var b strings.Builder
	b.WriteString("set +o noclobber\n")
	b.WriteString("export CI_BUILDS_DIR=")
	p.buildsDir.render(&b)
	b.WriteString("\nexport CI_PROJECT_DIR=\"${CI_BUILDS_DIR}\"")
	b.WriteString(shellQuote("/" + strconv.Itoa(o.Slot) + "/" + p.projectRel))
	b.WriteString("\n")
	p.dirs = b.String()[len("set +o noclobber\n"):]
	fmt.Fprintf(&b, "export CI_CONCURRENT_ID=%d CI_CONCURRENT_PROJECT_ID=%d\n", o.Slot, o.Slot)
	b.WriteString("__ir_tmp=\"${CI_PROJECT_DIR}.tmp\"\n")
	b.WriteString("rm -rf \"$__ir_tmp\" && mkdir -p \"$__ir_tmp\" && chmod 0700 \"$__ir_tmp\"\n")

	version := o.RunnerInfo.Version
	if version == "" {
		version = "dev"
	}
	entries := []entry{
		{key: "CI", value: "true", source: "runner default"},
		{key: "GITLAB_CI", value: "true", source: "runner default"},
		{key: "CI_SERVER", value: "yes", source: "runner default"},
		{key: "CI_RUNNER_VERSION", value: version, source: "runner default"},
		{key: "CI_RUNNER_EXECUTABLE_ARCH", value: runtime.GOOS + "/" + runtime.GOARCH, source: "runner default"},
	}
	for _, v := range j.Variables {
		if !validName(v.Key) {
			p.warnings = append(p.warnings, fmt.Sprintf("skipping job variable %q: not a valid shell variable name", v.Key))
			continue
		}
		if shellOnly[v.Key] {
			continue // the runner's value wins, as GitLab Runner
		}
		entries = append(entries, entry{key: v.Key, value: v.Value, raw: v.Raw, file: v.File, source: "job"})
	}
	env, warn := parseEnvironment(o.Environment)
	p.warnings = append(p.warnings, warn...)
	for _, e := range env {
		if shellOnly[e.key] {
			p.warnings = append(p.warnings, fmt.Sprintf("ignoring runner environment entry %s: the runner sets it", e.key))
			continue
		}
		entries = append(entries, e)
	}

	b.WriteString("__ir_umask=$(umask); umask 077\n")
	r := newResolver(entries, shellOnly)
	p.vars = map[string]string{}
	for i, e := range entries {
		if r.last[e.key] != i {
			continue // overridden later
		}
		if e.file {
			p.vars[e.key] = "" // a path on the instance
			fmt.Fprintf(&b, "printf '%%s' %s > \"$__ir_tmp/%s\"\nexport %s=\"$__ir_tmp/%s\"\n", shellQuote(e.value), e.key, e.key, e.key)
			continue
		}
		w, ok := r.value(i)
		if !ok {
			p.warnings = append(p.warnings, fmt.Sprintf("variable %s expands to more than %d bytes; it is used without expansion", e.key, maxExpandedLen))
		}
		p.vars[e.key] = w.literal()
		b.WriteString("export " + e.key + "=")
		w.render(&b)
		b.WriteByte('\n')
	}
	b.WriteString("umask \"$__ir_umask\"\n")
	p.prelude = b.String()
}

// groupAlive defines __ir_alive PGID: true while process group PGID has a
// process that is not a zombie. kill -0 also counts zombies, which an
// init that reaps slowly (some containers) keeps for seconds; on Linux
// /proc tells them apart.
const groupAlive = `__ir_alive() {
  kill -0 -- -"$1" 2>/dev/null || return 1
  [ -r /proc/self/stat ] || return 0
  local IFS=' ' __ir_g="$1" __ir_f __ir_st
  for __ir_f in /proc/[0-9]*/stat; do
    read -r __ir_st 2>/dev/null <"$__ir_f" || continue # 2> first: a process that just ended must not print an error
    set -f; set -- ${__ir_st##*) }; set +f
    [ "$3" = "$__ir_g" ] && [ "$1" != Z ] && return 0
  done
  return 1
}
`

// stage is one generated stage script and the token that tells its stage
// file apart from those of other stages.
type stage struct {
	text  string // the script, sent as the stage command's standard input
	token string // random, in the stage file and the end-of-script line
	reap  string // reapScript(token)
}

// stageFileSuffix names the stage file next to the project directory
// ("<CI_PROJECT_DIR>.stage"): "<token> <process group id>" of the running
// stage's body, so that a separate session can stop the body's processes
// when the stage's own session cannot (see reapScript).
const stageFileSuffix = ".stage"

// stopGrace is how long the stage wrapper and the reap script wait after
// SIGTERM before they send SIGKILL to the stage's process group.
const stopGrace = 10 * time.Second

// waitTicks bounds (in 0.2 s polls: stopGrace plus 5 s) how long the stage
// wrapper and the reap script wait for the group to be empty after
// SIGTERM: what is left after SIGKILL is a zombie nobody reaps (a
// container whose PID 1 does not) or a process stuck in the kernel.
const waitTicks = int((stopGrace + 5*time.Second) / (200 * time.Millisecond))

// newToken returns 16 random hex digits.
func newToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// stageScript wraps body (bash run with `set -eo pipefail` in its own
// process group) with the variables. The wrapper:
//   - writes "<token> <pgid>" of the body to the stage file;
//   - forwards SIGTERM/SIGINT/SIGHUP to the whole group (SIGKILL
//     stopGrace later, from a helper in a group of its own so that a
//     SIGKILL of the session's group spares it), then waits until no
//     process of the group is left (at most stopGrace plus 5 s);
//   - runs a watchdog (in a group of its own) that reads the session's
//     standard input, which jobexec keeps open while the stage runs: EOF
//     (the stage's context ended, Runner returned, or the SSH session or
//     connection closed) stops the wrapper as SIGTERM does. So cancel,
//     timeout and a lost connection stop the job's processes even when the
//     SSH server refuses "signal" requests (OpenSSH does for root logins
//     without privilege separation);
//   - removes the file variables at the end.
//
// The wrapper's own stderr goes to /dev/null once the body runs, so bash's
// job notices ("[1]+ Terminated …") stay out of the trace.
func (p *plan) stageScript(jobStatus string, body string) stage {
	token := newToken()
	var b strings.Builder
	b.Grow(len(p.prelude) + len(body) + 2048)
	writeBootstrap(&b, token)
	b.WriteString("# stage script generated by instance-runner\n")
	b.WriteString(keepSessionPath)
	b.WriteString(p.prelude)
	b.WriteString("export CI_JOB_STATUS=" + shellQuote(jobStatus) + "\n")
	b.WriteString("__ir_main() {\nset -eo pipefail\n")
	b.WriteString(body)
	b.WriteString("\n}\n")
	b.WriteString(groupAlive)
	b.WriteString(`__ir_pid= __ir_stopping=
__ir_sf="${CI_PROJECT_DIR}` + stageFileSuffix + `"
__ir_stop() {
  trap - TERM INT HUP
  __ir_stopping=1
  [ -n "$__ir_pid" ] || return 0
  kill -TERM -- -"$__ir_pid" 2>/dev/null
  ( sleep ` + strconv.Itoa(int(stopGrace/time.Second)) + `; kill -KILL -- -"$__ir_pid" 2>/dev/null ) </dev/null >/dev/null 2>&1 &
}
trap __ir_stop TERM INT HUP
set -m
__ir_main </dev/null &
__ir_pid=$!
printf '%s %s\n' ` + token + ` "$__ir_pid" >"$__ir_sf" 2>/dev/null
( trap - TERM INT HUP; while IFS= read -r __ir_l; do :; done; kill -TERM $$ ) >/dev/null 2>&1 &
__ir_wd=$!
exec 2>/dev/null
if [ -n "$__ir_stopping" ]; then __ir_stop; fi
while :; do
  wait "$__ir_pid"; __ir_rc=$?
  kill -0 "$__ir_pid" 2>/dev/null || break
done
__ir_n=0
case "$__ir_rc" in 129|141)
  # SIGHUP or SIGPIPE: the session's output may be gone with the
  # connection; give the watchdog a moment to see the input end.
  while [ -z "$__ir_stopping" ] && [ "$__ir_n" -lt 5 ]; do sleep 0.2; __ir_n=$((__ir_n+1)); done ;;
esac
kill -KILL "$__ir_wd" 2>/dev/null
__ir_n=0
if [ -n "$__ir_stopping" ]; then
  while __ir_alive "$__ir_pid" && [ "$__ir_n" -lt ` + strconv.Itoa(waitTicks) + ` ]; do sleep 0.2; __ir_n=$((__ir_n+1)); done
fi
__ir_alive "$__ir_pid" || rm -f "$__ir_sf"
rm -rf "$__ir_tmp"
exit "$__ir_rc"
`)
	writeScriptEnd(&b, token)
	return stage{text: b.String(), token: token, reap: p.reapScript(token)}
}

// writeBootstrap writes the first line of a script sent to
// BootstrapCommand: bash reads it from standard input and then slurps the
// rest of the script up to the end line of token (standard input stays
// open after it; see stageScript).
func writeBootstrap(b *strings.Builder, token string) {
	b.WriteString(`__ir_s=$(sed -n '/^#__ir_end_` + token + `$/q;p'); eval "$__ir_s"` + "\n")
}

// writeScriptEnd writes the end line that writeBootstrap waits for.
func writeScriptEnd(b *strings.Builder, token string) {
	b.WriteString("\n#__ir_end_" + token + "\n")
}

// reapScript stops what is left of the stage with the given token (its
// process group as written to the stage file): SIGTERM, SIGKILL after
// stopGrace, and waits until the group is empty. It runs in a separate
// session after a stage was cancelled, timed out or aborted, so that
// nothing of the stage survives into after_script or the next job on the
// slot whatever the stage's own session did with its signals. Exit status
// 0: nothing is left; 1: processes of the group still exist (stuck in the
// kernel) after stopGrace plus 5 s.
func (p *plan) reapScript(token string) string {
	var b strings.Builder
	writeBootstrap(&b, token)
	b.WriteString(p.dirs)
	b.WriteString(groupAlive)
	ticks := int(stopGrace / (200 * time.Millisecond))
	fmt.Fprintf(&b, `__ir_sf="${CI_PROJECT_DIR}%s"
read -r __ir_t __ir_g <"$__ir_sf" 2>/dev/null || exit 0
[ "$__ir_t" = %s ] || exit 0
case "$__ir_g" in ''|*[!0-9]*) exit 0 ;; esac
[ "$__ir_g" -gt 1 ] || exit 0
kill -TERM -- -"$__ir_g" 2>/dev/null
__ir_n=0
while __ir_alive "$__ir_g"; do
  [ "$__ir_n" -ge %d ] && kill -KILL -- -"$__ir_g" 2>/dev/null
  [ "$__ir_n" -ge %d ] && exit 1
  sleep 0.2; __ir_n=$((__ir_n+1))
done
rm -f "$__ir_sf"
exit 0
`, stageFileSuffix, token, ticks, waitTicks)
	writeScriptEnd(&b, token)
	return b.String()
}

// echoCommand returns bash that prints cmd as GitLab Runner does: "$ cmd"
// in bold green; a multi-line command shows its first line and
// "# collapsed multi-line command".
func echoCommand(b *strings.Builder, cmd string) {
	shown := cmd
	if first, _, ok := strings.Cut(strings.TrimSpace(cmd), "\n"); ok {
		shown = first + " # collapsed multi-line command"
	}
	b.WriteString("printf '%s\\n' " + shellQuote(ansiBoldGreen+"$ "+shown+ansiReset) + "\n")
}

// commands appends each non-empty command, echoed then run.
func commands(b *strings.Builder, cmds []string) {
	for _, c := range cmds {
		if strings.TrimSpace(c) == "" {
			continue
		}
		echoCommand(b, c)
		b.WriteString(c)
		b.WriteString("\n")
	}
}

// scriptBody is the step_script stage: pre_build_script, the script step,
// post_build_script, in the project directory.
func (p *plan) scriptBody(pre, post string) string {
	var b strings.Builder
	b.WriteString("cd \"$CI_PROJECT_DIR\"\n")
	p.debugTrace(&b)
	if strings.TrimSpace(pre) != "" {
		commands(&b, []string{pre})
	}
	commands(&b, p.script.Script)
	if strings.TrimSpace(post) != "" {
		commands(&b, []string{post})
	}
	return b.String()
}

// afterScriptBody is the after_script stage, in a fresh shell in the
// project directory.
func (p *plan) afterScriptBody() string {
	var b strings.Builder
	b.WriteString("mkdir -p \"$CI_PROJECT_DIR\" && cd \"$CI_PROJECT_DIR\"\n")
	p.debugTrace(&b)
	commands(&b, p.afterScript.Script)
	return b.String()
}

// getSourcesAttempts is GET_SOURCES_ATTEMPTS (1-10), else 1.
func (p *plan) getSourcesAttempts() int {
	if n, err := strconv.Atoi(p.vars["GET_SOURCES_ATTEMPTS"]); err == nil && n >= 1 && n <= 10 {
		return n
	}
	return 1
}

// scriptTimeout is RUNNER_SCRIPT_TIMEOUT (a Go duration), else 0.
func (p *plan) scriptTimeout() time.Duration {
	if d, err := time.ParseDuration(p.vars["RUNNER_SCRIPT_TIMEOUT"]); err == nil && d > 0 {
		return d
	}
	return 0
}

// debugTracing reports whether CI_DEBUG_TRACE is "true": the job asks for
// `set -x` in its scripts, as GitLab Runner's debug logging.
func (p *plan) debugTracing() bool { return p.vars["CI_DEBUG_TRACE"] == "true" }

// debugTrace appends `set -x` when CI_DEBUG_TRACE is on.
func (p *plan) debugTrace(b *strings.Builder) {
	if p.debugTracing() {
		b.WriteString("set -x\n")
	}
}

// gitStrategy is GIT_STRATEGY (clone, fetch, none; "empty" is none), or
// fetch when the project allows it, else clone, as GitLab Runner.
func (p *plan) gitStrategy() (string, error) {
	switch s := p.vars["GIT_STRATEGY"]; s {
	case "clone", "fetch", "none":
		return s, nil
	case "empty":
		return "none", nil
	case "":
		if p.job.AllowGitFetch {
			return "fetch", nil
		}
		return "clone", nil
	default:
		return "", fmt.Errorf("GIT_STRATEGY %q is not supported; use clone, fetch or none", s)
	}
}

// gitDepth is GIT_DEPTH when it is a number, else git_info.depth.
func (p *plan) gitDepth() int {
	if s, ok := p.vars["GIT_DEPTH"]; ok && s != "" {
		if n, err := strconv.Atoi(s); err == nil && n >= 0 {
			return n
		}
	}
	return max(p.job.GitInfo.Depth, 0)
}

// refspecs are git_info.refspecs, or the ref's default when none are sent.
func (p *plan) refspecs() []string {
	gi := p.job.GitInfo
	if len(gi.Refspecs) > 0 {
		return gi.Refspecs
	}
	switch {
	case gi.Ref == "":
		return []string{"+refs/heads/*:refs/remotes/origin/*"}
	case gi.RefType == "tag":
		return []string{"+refs/tags/" + gi.Ref + ":refs/tags/" + gi.Ref}
	default:
		return []string{"+refs/heads/" + gi.Ref + ":refs/remotes/origin/" + gi.Ref}
	}
}

// sourcesBody is the get_sources stage: pre_get_sources_script hooks, the
// clone or fetch, checkout of the sha, clean, submodules,
// post_get_sources_script hooks.
func (p *plan) sourcesBody(strategy string) (string, error) {
	var b strings.Builder
	gi := p.job.GitInfo
	b.WriteString("mkdir -p \"$CI_BUILDS_DIR\" && cd \"$CI_BUILDS_DIR\"\n")
	p.hooks(&b, "pre_get_sources_script")
	if strategy == "none" {
		b.WriteString("printf '%s\\n' 'Skipping Git repository setup (GIT_STRATEGY=none)'\n")
		b.WriteString("mkdir -p \"$CI_PROJECT_DIR\"\n")
		b.WriteString("cd \"$CI_PROJECT_DIR\"\n")
		p.hooks(&b, "post_get_sources_script")
		return b.String(), nil
	}
	if gi.RepoURL == "" {
		return "", fmt.Errorf("git_info.repo_url is empty but GIT_STRATEGY is %s; set GIT_STRATEGY=none for jobs without a repository", strategy)
	}
	for _, s := range []string{gi.RepoURL, gi.Sha, gi.Ref} {
		if strings.ContainsAny(s, "\n\x00") {
			return "", fmt.Errorf("git_info contains a newline or NUL byte")
		}
	}
	depth := p.gitDepth()
	if depth > 0 {
		fmt.Fprintf(&b, "printf '%%s\\n' %s\n", shellQuote(fmt.Sprintf("Fetching changes with git depth set to %d...", depth)))
	} else {
		b.WriteString("printf '%s\\n' 'Fetching changes...'\n")
	}
	if strategy == "clone" {
		b.WriteString("rm -rf \"$CI_PROJECT_DIR\"\n")
	}
	b.WriteString("mkdir -p \"$CI_PROJECT_DIR\" && cd \"$CI_PROJECT_DIR\"\n")
	b.WriteString("rm -f .git/index.lock .git/shallow.lock .git/HEAD.lock .git/hooks/post-checkout .git/config.lock\n")
	initFlags := ""
	if gi.RepoObjectFormat == "sha256" {
		initFlags = " --object-format=sha256"
	}
	b.WriteString("if [ -d .git ]; then\n  printf 'Reinitialized existing Git repository in %s/.git/\\n' \"$CI_PROJECT_DIR\"\nelse\n")
	b.WriteString("  git init -q" + initFlags + " && printf 'Initialized empty Git repository in %s/.git/\\n' \"$CI_PROJECT_DIR\"\n")
	if strategy == "clone" {
		b.WriteString("  printf '%s\\n' 'Created fresh repository.'\n")
	}
	b.WriteString("fi\n")
	// A CA bundle GitLab hands over for a self-signed server (edge case
	// 20 of the jobs API notes) is used for the fetch, as GitLab Runner.
	b.WriteString("if [ -n \"${CI_SERVER_TLS_CA_FILE-}\" ] && [ -f \"$CI_SERVER_TLS_CA_FILE\" ]; then export GIT_SSL_CAINFO=\"$CI_SERVER_TLS_CA_FILE\"; fi\n")
	q := shellQuote(p.repoURL)
	b.WriteString("if git remote get-url origin >/dev/null 2>&1; then git remote set-url origin " + q + "; else git remote add origin " + q + "; fi\n")
	// Credentials go to git through the environment of the fetch only
	// (url.<with token>.insteadOf), never to .git/config or the process
	// list.
	auth := ""
	if p.authBase != "" {
		auth = "GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=" + shellQuote("url."+p.authBase+".insteadOf") + " GIT_CONFIG_VALUE_0=" + shellQuote(p.authPrefix) + " "
	}
	fetch := auth + "GIT_TERMINAL_PROMPT=0 git -c fetch.recurseSubmodules=false -c core.askPass=true fetch origin --prune --no-tags"
	if depth > 0 {
		fetch += " --depth " + strconv.Itoa(depth)
	} else {
		b.WriteString("__ir_unshallow=; if [ -f .git/shallow ]; then __ir_unshallow=--unshallow; fi\n")
		fetch += " $__ir_unshallow"
	}
	for _, rs := range p.refspecs() {
		fetch += " " + shellQuote(rs)
	}
	if extra := p.vars["GIT_FETCH_EXTRA_FLAGS"]; extra != "" {
		fetch += " $GIT_FETCH_EXTRA_FLAGS"
	}
	b.WriteString(fetch + "\n")
	if p.vars["GIT_CHECKOUT"] != "false" {
		target, shown := gi.Sha, gi.Sha
		if target == "" {
			target, shown = "FETCH_HEAD", "FETCH_HEAD"
		}
		if len(shown) > 8 {
			shown = shown[:8]
		}
		msg := fmt.Sprintf("Checking out %s as detached HEAD (ref is %s)...", shown, gi.Ref)
		fmt.Fprintf(&b, "printf '%%s\\n' %s\n", shellQuote(msg))
		b.WriteString("git -c advice.detachedHead=false checkout -f -q " + shellQuote(target) + "\n")
		switch flags := p.vars["GIT_CLEAN_FLAGS"]; flags {
		case "none":
		case "":
			b.WriteString("git clean -ffdx\n")
		default:
			b.WriteString("git clean $GIT_CLEAN_FLAGS\n")
		}
	} else {
		b.WriteString("printf '%s\\n' 'Skipping Git checkout (GIT_CHECKOUT=false)'\n")
	}
	switch p.vars["GIT_SUBMODULE_STRATEGY"] {
	case "normal":
		b.WriteString("printf '%s\\n' 'Updating Git submodules...'\ngit submodule sync\n" + auth + "git submodule update --init\n")
	case "recursive":
		b.WriteString("printf '%s\\n' 'Updating Git submodules recursively...'\ngit submodule sync --recursive\n" + auth + "git submodule update --init --recursive\n")
	default:
		b.WriteString("printf '%s\\n' 'Skipping Git submodules setup'\n")
	}
	p.hooks(&b, "post_get_sources_script")
	return b.String(), nil
}

// hooks appends the job's hooks of that name (pre/post_get_sources_script).
func (p *plan) hooks(b *strings.Builder, name string) {
	for _, h := range p.job.Hooks {
		if h.Name == name {
			commands(b, h.Script)
		}
	}
}
