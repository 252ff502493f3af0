package daemon

import (
	"fmt"
	"os"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// NewLogger builds the daemon's logger from config.toml's `log_level`
// (debug, info, warn/warning, error, fatal, panic; empty = info) and
// `log_format` (json; text or runner = human-readable console lines; empty
// = runner). Logs go to stderr. It returns an error naming the bad value.
func NewLogger(level, format string) (*zap.Logger, error) {
	lvl := zapcore.InfoLevel
	switch strings.ToLower(level) {
	case "", "info":
	case "debug":
		lvl = zapcore.DebugLevel
	case "warn", "warning":
		lvl = zapcore.WarnLevel
	case "error":
		lvl = zapcore.ErrorLevel
	case "fatal":
		lvl = zapcore.FatalLevel
	case "panic":
		lvl = zapcore.PanicLevel
	default:
		return nil, fmt.Errorf("log_level %q is not one of debug, info, warn, error, fatal, panic", level)
	}
	var enc zapcore.Encoder
	switch strings.ToLower(format) {
	case "json":
		ec := zap.NewProductionEncoderConfig()
		ec.EncodeTime = zapcore.RFC3339NanoTimeEncoder
		enc = zapcore.NewJSONEncoder(ec)
	case "", "text", "runner":
		ec := zap.NewDevelopmentEncoderConfig()
		ec.EncodeTime = zapcore.RFC3339TimeEncoder
		ec.CallerKey = ""
		ec.StacktraceKey = ""
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, fmt.Errorf("log_format %q is not one of json, text, runner", format)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(os.Stderr), lvl)
	return zap.New(core), nil
}
