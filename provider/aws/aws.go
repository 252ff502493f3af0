// Package aws is the AWS provider: an instance group backed by an EC2 Auto
// Scaling group, on aws-sdk-go-v2. It is what GitLab's fleeting-plugin-aws
// is to GitLab Runner, built in: `plugin = "aws"` (or
// "fleeting-plugin-aws") selects it, with the same plugin_config keys.
//
// The taskscaler owns the group's desired capacity: Increase raises it with
// one SetDesiredCapacity, Decrease terminates exactly the given instances
// with TerminateInstanceInAutoScalingGroup and
// ShouldDecrementDesiredCapacity, so Auto Scaling never picks a busy
// instance itself. Set the group up as docs/aws.md says: MinSize 0, new
// instances protected from scale-in, AZRebalance suspended.
//
// API cost: Update makes one DescribeAutoScalingGroups call, plus
// DescribeInstances pages of up to 1,000 instances only when an instance's
// address is not yet known (addresses are cached); Heartbeat for any number
// of instances shares one refresh per HeartbeatMaxAge. Retries of throttled
// and failed calls go through the SDK's adaptive retryer.
//
// Connecting: ConnectInfo returns the instance's private address (and its
// public one, for `use_external_addr`), OS and architecture from EC2, and
// either the static credentials of connector_config or, by default, an
// ephemeral SSH key pushed with EC2 Instance Connect just before the dial,
// valid 60 seconds (ConnectInfo.Expires).
//
// # Port tag
//
// An instance tagged `taskscaler:ssh-port` = N is reached on TCP port N
// instead of connector_config's protocol_port. This is meant for setups where
// every instance's SSH port differs (port mapping, test endpoints such as
// provider/aws/awstest); anyone who can tag the instances can redirect the
// connection, which already requires control of the account.
package aws

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"
	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/fleetwright/taskscaler/provider"
)

// Version is the provider version reported in provider.Info.
const Version = "0.1.0"

// PortTag is the EC2 instance tag whose value, a TCP port, overrides the
// SSH port for that instance (see the package documentation).
const PortTag = "taskscaler:ssh-port"

// Defaults of the tunables set by Options.
const (
	// DefaultMaxAttempts is how many times the SDK's retryer tries one API
	// call (first try included) on throttling and 5xx errors.
	DefaultMaxAttempts = 10
	// DefaultMaxBackoff caps the retryer's wait between two attempts.
	DefaultMaxBackoff = 20 * time.Second
	// DefaultHeartbeatMaxAge is how old the EC2 state behind a Heartbeat
	// answer may be; all heartbeats within it share one refresh.
	DefaultHeartbeatMaxAge = 15 * time.Second
	// DefaultDecreaseParallelism bounds concurrent
	// TerminateInstanceInAutoScalingGroup calls in one Decrease.
	DefaultDecreaseParallelism = 8
	// instanceConnectKeyLifetime is how long AWS keeps a key pushed with
	// SendSSHPublicKey (60 seconds, per the EC2 Instance Connect API).
	instanceConnectKeyLifetime = 60 * time.Second
	// keyReuse is how long a pushed key is reused for further dials of the
	// same instance before it is pushed again, leaving every dial at least
	// 30 seconds of validity.
	keyReuse = 30 * time.Second
	// defaultUsername is the login user for dynamic credentials when
	// connector_config has none: Amazon Linux's default user.
	defaultUsername = "ec2-user"
)

// HTTPClient is what WithHTTPClient accepts (an *http.Client satisfies it).
type HTTPClient interface {
	Do(*http.Request) (*http.Response, error)
}

// Option changes how New builds a Group; mostly for tests.
type Option func(*options)

type options struct {
	endpoint        string
	httpClient      HTTPClient
	now             func() time.Time
	creds           awssdk.CredentialsProvider
	maxAttempts     int
	maxBackoff      time.Duration
	heartbeatMaxAge time.Duration
	parallelism     int
	standardRetry   bool // tests: standard instead of adaptive retry mode
}

// WithEndpoint sends every API call (Auto Scaling, EC2, EC2 Instance
// Connect) to url instead of AWS, e.g. an awstest.Server. The environment
// variable AWS_ENDPOINT_URL does the same without code.
func WithEndpoint(url string) Option { return func(o *options) { o.endpoint = url } }

// WithHTTPClient sets the HTTP client of the SDK.
func WithHTTPClient(c HTTPClient) Option { return func(o *options) { o.httpClient = c } }

// WithClock sets the clock used for cache ages and credential expiry; nil
// means time.Now.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithCredentials replaces the SDK's default credential chain, e.g. with
// credentials.NewStaticCredentialsProvider for tests.
func WithCredentials(p awssdk.CredentialsProvider) Option {
	return func(o *options) { o.creds = p }
}

// WithRetry sets the retryer's attempts per call (first try included,
// default DefaultMaxAttempts) and its longest wait between attempts
// (default DefaultMaxBackoff). Tests use a tiny backoff.
func WithRetry(maxAttempts int, maxBackoff time.Duration) Option {
	return func(o *options) { o.maxAttempts, o.maxBackoff = maxAttempts, maxBackoff }
}

// WithHeartbeatMaxAge sets how stale the state behind Heartbeat may be
// (default DefaultHeartbeatMaxAge).
func WithHeartbeatMaxAge(d time.Duration) Option {
	return func(o *options) { o.heartbeatMaxAge = d }
}

// withStandardRetry makes the SDK use its standard retry mode instead of the
// adaptive one. The adaptive mode's client-side rate limiter sleeps on the
// wall clock (at least 2 s per call once throttled, at its 0.5 requests/s
// floor), which tests on a virtual clock cannot afford; the retry policy is
// otherwise the same.
func withStandardRetry() Option { return func(o *options) { o.standardRetry = true } }

// Group is an AWS Auto Scaling group as a provider.InstanceGroup and
// provider.Heartbeater. Its methods are safe for concurrent use.
type Group struct {
	cfg    Config
	o      options
	as     *autoscaling.Client
	ec2    *ec2.Client
	ic     *ec2instanceconnect.Client
	region string

	log      *zap.Logger
	settings provider.Settings
	privPEM  []byte // private key returned in ConnectInfo (dynamic credentials)
	pubKey   string // its public half, authorized_keys format

	refreshMu sync.Mutex // serialises refreshes so concurrent callers share one
	// scaleMu serialises Increase and Decrease: each reads the desired
	// capacity and changes it, and two of them interleaving would lose an
	// update (two Increase(1) both setting desired+1).
	scaleMu sync.Mutex

	mu        sync.Mutex
	inited    bool
	closed    bool
	members   map[string]member  // from the last DescribeAutoScalingGroups
	listedAt  time.Time          // when members was fetched
	details   map[string]details // EC2 facts, cached by instance id
	ec2At     time.Time          // when the last full DescribeInstances listing ended
	pushed    map[string]push    // last SendSSHPublicKey per instance
	warnedFor map[string]bool    // unknown lifecycle states already warned about
}

type member struct {
	lifecycle string
	health    string
	az        string
}

type details struct {
	privateIP string
	publicIP  string
	state     string // EC2 state name
	arch      string // provider form: amd64, arm64
	os        string // linux, windows, darwin
	az        string
	port      int // from PortTag, 0 if absent
}

type push struct {
	user string
	at   time.Time
}

// New builds a Group for cfg. It loads the AWS SDK configuration (shared
// files, profile, region, credentials chain) but makes no API call; Init
// checks the group. It returns an error for an invalid cfg or an unreadable
// shared config file.
func New(cfg Config, opts ...Option) (*Group, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := options{
		maxAttempts:     DefaultMaxAttempts,
		maxBackoff:      DefaultMaxBackoff,
		heartbeatMaxAge: DefaultHeartbeatMaxAge,
		parallelism:     DefaultDecreaseParallelism,
		now:             time.Now,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.now == nil {
		o.now = time.Now
	}
	loadOpts := []func(*config.LoadOptions) error{
		config.WithRetryer(func() awssdk.Retryer {
			std := func(so *retry.StandardOptions) {
				so.MaxAttempts = o.maxAttempts
				so.MaxBackoff = o.maxBackoff
				so.Backoff = retry.NewExponentialJitterBackoff(o.maxBackoff)
			}
			var r awssdk.Retryer
			if o.standardRetry {
				r = retry.NewStandard(std)
			} else {
				r = retry.NewAdaptiveMode(func(ao *retry.AdaptiveModeOptions) {
					ao.StandardOptions = append(ao.StandardOptions, std)
				})
			}
			// Auto Scaling reports conflicting activities with codes the
			// SDK does not retry by default; they clear by themselves.
			return retry.AddWithErrorCodes(r, "ScalingActivityInProgress", "ResourceContention")
		}),
	}
	if cfg.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		loadOpts = append(loadOpts, config.WithSharedConfigProfile(cfg.Profile))
	}
	if cfg.ConfigFile != "" {
		loadOpts = append(loadOpts, config.WithSharedConfigFiles([]string{cfg.ConfigFile}))
	}
	if cfg.CredentialsFile != "" {
		loadOpts = append(loadOpts, config.WithSharedCredentialsFiles([]string{cfg.CredentialsFile}))
	}
	if o.httpClient != nil {
		loadOpts = append(loadOpts, config.WithHTTPClient(o.httpClient))
	}
	if o.creds != nil {
		loadOpts = append(loadOpts, config.WithCredentialsProvider(o.creds))
	}
	if o.endpoint != "" {
		loadOpts = append(loadOpts, config.WithBaseEndpoint(o.endpoint))
	}
	awsCfg, err := config.LoadDefaultConfig(context.Background(), loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("aws: loading the AWS SDK configuration (profile %q, config_file %q, credentials_file %q): %w",
			cfg.Profile, cfg.ConfigFile, cfg.CredentialsFile, err)
	}
	if awsCfg.HTTPClient == nil {
		awsCfg.HTTPClient = awshttp.NewBuildableClient()
	}
	awsCfg.HTTPClient = bufferedBodyClient{awsCfg.HTTPClient}
	if awsCfg.Region == "" {
		return nil, errors.New(`aws: no AWS region: set plugin_config region (e.g. region = "us-east-1"), AWS_REGION, or a region in the shared config profile`)
	}
	return &Group{
		cfg:       cfg,
		o:         o,
		region:    awsCfg.Region,
		as:        autoscaling.NewFromConfig(awsCfg),
		ec2:       ec2.NewFromConfig(awsCfg),
		ic:        ec2instanceconnect.NewFromConfig(awsCfg),
		log:       zap.NewNop(),
		members:   map[string]member{},
		details:   map[string]details{},
		pushed:    map[string]push{},
		warnedFor: map[string]bool{},
	}, nil
}

// Init checks that the Auto Scaling group exists, reports its MaxSize as
// Info.MaxSize, warns when the group lets AWS terminate busy instances
// (AZRebalance not suspended, scale-in protection off), and prepares
// credentials: with use_static_credentials it requires a key or password;
// otherwise it uses connector_config's key (key_path) or a new ed25519 key
// for EC2 Instance Connect. Errors: ErrNotFound class when the group does not
// exist, ErrAccessDenied naming the missing IAM action, and SDK errors.
func (g *Group) Init(ctx context.Context, logger *zap.Logger, settings provider.Settings) (provider.Info, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	log := logger.With(zap.String("provider", "aws"), zap.String("group", g.cfg.Name), zap.String("region", g.region))
	if err := g.prepareCredentials(log, &settings); err != nil {
		return provider.Info{}, err
	}
	asg, err := g.describeGroup(ctx, "init")
	if err != nil {
		return provider.Info{}, err
	}
	if asg.NewInstancesProtectedFromScaleIn == nil || !*asg.NewInstancesProtectedFromScaleIn {
		log.Warn("Auto Scaling group does not protect new instances from scale-in: AWS may terminate an instance running a job when the desired capacity drops; enable NewInstancesProtectedFromScaleIn (see docs/aws.md)",
			zap.String("setting", "NewInstancesProtectedFromScaleIn"))
	}
	suspended := false
	for _, p := range asg.SuspendedProcesses {
		if awssdk.ToString(p.ProcessName) == "AZRebalance" {
			suspended = true
		}
	}
	if !suspended {
		log.Warn("Auto Scaling group's AZRebalance process is not suspended: AWS may terminate running instances, busy ones included, to rebalance zones; suspend it (see docs/aws.md)",
			zap.String("process", "AZRebalance"))
	}
	if m := awssdk.ToInt32(asg.MinSize); m > 0 {
		log.Warn("Auto Scaling group MinSize is above 0: the taskscaler cannot remove the last instances (TerminateInstanceInAutoScalingGroup fails at MinSize); set MinSize to 0",
			zap.Int32("min_size", m))
	}
	g.mu.Lock()
	g.log = log
	g.settings = settings
	g.inited = true
	g.applyGroupLocked(asg, g.o.now())
	g.mu.Unlock()
	maxSize := int(awssdk.ToInt32(asg.MaxSize))
	log.Info("aws instance group ready", zap.Int("max_size", maxSize), zap.Int32("desired_capacity", awssdk.ToInt32(asg.DesiredCapacity)),
		zap.Bool("dynamic_credentials", !settings.UseStaticCredentials))
	return provider.Info{
		ID:        "aws/" + g.region + "/" + g.cfg.Name,
		MaxSize:   maxSize,
		Version:   Version,
		BuildInfo: "aws-sdk-go-v2",
	}, nil
}

// prepareCredentials validates static credentials or sets up the key pushed
// with EC2 Instance Connect.
func (g *Group) prepareCredentials(log *zap.Logger, s *provider.Settings) error {
	if s.UseStaticCredentials {
		if len(s.Key) == 0 && s.Password == "" && s.Protocol != provider.ProtocolWinRM && s.Protocol != provider.ProtocolWinRMHTTPS {
			return errors.New("aws: use_static_credentials = true needs key_path or password in [runners.autoscaler.connector_config]; or set use_static_credentials = false to push a key with EC2 Instance Connect")
		}
		return nil
	}
	if s.Username == "" {
		s.Username = defaultUsername
		log.Info("connector_config username not set; using the Amazon Linux default for EC2 Instance Connect", zap.String("username", defaultUsername))
	}
	if len(s.Key) > 0 {
		signer, err := ssh.ParsePrivateKey(s.Key)
		if err != nil {
			return fmt.Errorf("aws: connector_config key_path: cannot parse the private key to push its public half with EC2 Instance Connect: %w (use an unencrypted OpenSSH or PEM key)", err)
		}
		g.privPEM = s.Key
		g.pubKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
		return nil
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("aws: generating an SSH key for EC2 Instance Connect: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "taskscaler")
	if err != nil {
		return fmt.Errorf("aws: encoding the SSH key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return fmt.Errorf("aws: encoding the SSH public key: %w", err)
	}
	g.privPEM = pem.EncodeToMemory(block)
	g.pubKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))
	return nil
}

// Shutdown forgets cached state. It deletes no instance and no key (keys
// pushed with EC2 Instance Connect expire by themselves after 60 seconds).
func (g *Group) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	clear(g.pushed)
	return nil
}

func (g *Group) checkUsable(op string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case !g.inited:
		return fmt.Errorf("aws: %s before Init", op)
	case g.closed:
		return fmt.Errorf("aws: %s after Shutdown", op)
	}
	return nil
}

func (g *Group) logger() *zap.Logger {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.log
}

// bufferedBodyClient hands the transport a private in-memory copy of each
// request body. The SDK closes its own request body as soon as Do returns;
// when Go's transport has not yet finished its final read of that body (it
// reads once more after Content-Length bytes to check for EOF), the closed
// body fails the write loop and the transport closes the connection while
// the response body is still being read, failing a large DescribeInstances
// response with "use of closed network connection" (seen with the EC2
// client on responses of a few tens of kilobytes). Our request bodies are
// small forms and JSON documents, so the copy is cheap.
type bufferedBodyClient struct{ next awssdk.HTTPClient }

func (c bufferedBodyClient) Do(req *http.Request) (*http.Response, error) {
	if req.Body != nil && req.Body != http.NoBody {
		b, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, fmt.Errorf("aws: reading the request body: %w", err)
		}
		req.Body = io.NopCloser(bytes.NewReader(b))
		req.ContentLength = int64(len(b))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	}
	return c.next.Do(req)
}

var (
	_ provider.InstanceGroup = (*Group)(nil)
	_ provider.Heartbeater   = (*Group)(nil)
)
