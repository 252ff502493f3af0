package aws

import (
	"errors"
	"fmt"
	"strings"

	"github.com/aws/smithy-go"

	"github.com/fleetwright/taskscaler/provider"
)

// ErrAccessDenied classifies an AWS AccessDenied / UnauthorizedOperation
// error: the IAM identity the provider runs as lacks a permission. The
// message names the IAM action to grant (see docs/aws.md for the minimal
// policy). It is a configuration error: retrying does not help.
var ErrAccessDenied = errors.New("access denied by AWS IAM")

// ErrInvalidRequest classifies an AWS ValidationError that is neither "not
// found" nor "above max size", e.g. a group's min size forbidding a
// termination. The AWS message says what to change.
var ErrInvalidRequest = errors.New("request rejected by AWS")

// Error codes that mean "slow down, try again later".
var throttleCodes = map[string]bool{
	"Throttling":                true, // Auto Scaling
	"ThrottlingException":       true, // EC2 Instance Connect
	"RequestLimitExceeded":      true, // EC2
	"RequestThrottled":          true,
	"TooManyRequestsException":  true,
	"ScalingActivityInProgress": true, // a conflicting activity; retry later
	"ResourceContention":        true, // the group is being updated by someone else
	"ResourceInUse":             true,
}

// Error codes that mean the account or the group has no room.
var quotaCodes = map[string]bool{
	"InsufficientInstanceCapacity":  true,
	"LimitExceeded":                 true, // Auto Scaling account limits
	"InstanceLimitExceeded":         true,
	"VcpuLimitExceeded":             true,
	"MaxSpotInstanceCountExceeded":  true,
	"ServiceQuotaExceededException": true,
}

// Error codes that mean the instance does not exist.
var notFoundCodes = map[string]bool{
	"InvalidInstanceID.NotFound":   true,
	"InvalidInstanceID.Malformed":  true,
	"EC2InstanceNotFoundException": true,
}

// Error codes that mean missing IAM permissions.
var deniedCodes = map[string]bool{
	"AccessDenied":          true,
	"AccessDeniedException": true,
	"UnauthorizedOperation": true,
	"AuthFailure":           true,
}

// iamActions names the IAM action each API operation needs.
var iamActions = map[string]string{
	"DescribeAutoScalingGroups":           "autoscaling:DescribeAutoScalingGroups",
	"SetDesiredCapacity":                  "autoscaling:SetDesiredCapacity",
	"TerminateInstanceInAutoScalingGroup": "autoscaling:TerminateInstanceInAutoScalingGroup",
	"DescribeInstances":                   "ec2:DescribeInstances",
	"SendSSHPublicKey":                    "ec2-instance-connect:SendSSHPublicKey",
}

// classify maps an AWS SDK error from API operation apiOp, made for the
// provider operation op (and instance id, if any), onto the provider error
// classes. It is the only place that interprets AWS error codes. A nil err
// gives nil; an error without an AWS code (network, context) is wrapped
// unclassified.
func classify(op, apiOp, id string, err error) error {
	if err == nil {
		return nil
	}
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return fmt.Errorf("%s: %s: %w", op, apiOp, err)
	}
	code, msg := ae.ErrorCode(), ae.ErrorMessage()
	mk := func(class error) error {
		return &provider.Error{Class: class, Op: op, ID: id, Err: fmt.Errorf("%s: %w", apiOp, err)}
	}
	switch {
	case throttleCodes[code]:
		return mk(provider.ErrThrottled)
	case quotaCodes[code]:
		return mk(provider.ErrQuotaExceeded)
	case notFoundCodes[code]:
		return mk(provider.ErrNotFound)
	case deniedCodes[code]:
		action := iamActions[apiOp]
		if action == "" {
			action = apiOp
		}
		return &provider.Error{Class: ErrAccessDenied, Op: op, ID: id,
			Err: fmt.Errorf("grant the IAM action %q to the identity the runner uses (see docs/aws.md for the minimal policy): %s: %w", action, apiOp, err)}
	case code == "ValidationError":
		lower := strings.ToLower(msg)
		switch {
		case strings.Contains(lower, "not found"):
			return mk(provider.ErrNotFound)
		case strings.Contains(lower, "above max"):
			return mk(provider.ErrQuotaExceeded)
		}
		return mk(ErrInvalidRequest)
	}
	return fmt.Errorf("%s: %s: %w", op, apiOp, err)
}

// apiCode returns the AWS error code in err's chain, or "".
func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}
