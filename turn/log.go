package turn

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
)

// loggerFactory gives pion/turn loggers that write to slog at debug level:
// what pion logs is per request and client driven (a refused request is an
// "error" to it), so none of it may reach the default level.
type loggerFactory struct{ log *slog.Logger }

func (f loggerFactory) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{f.log.With("pion", scope)}
}

type pionLogger struct{ log *slog.Logger }

func (l pionLogger) out(msg string) { l.log.Log(context.Background(), slog.LevelDebug, msg) }

func (l pionLogger) Trace(msg string)                  {}
func (l pionLogger) Tracef(string, ...any)             {}
func (l pionLogger) Debug(msg string)                  { l.out(msg) }
func (l pionLogger) Debugf(format string, args ...any) { l.out(fmt.Sprintf(format, args...)) }
func (l pionLogger) Info(msg string)                   { l.out(msg) }
func (l pionLogger) Infof(format string, args ...any)  { l.out(fmt.Sprintf(format, args...)) }
func (l pionLogger) Warn(msg string)                   { l.out(msg) }
func (l pionLogger) Warnf(format string, args ...any)  { l.out(fmt.Sprintf(format, args...)) }
func (l pionLogger) Error(msg string)                  { l.out(msg) }
func (l pionLogger) Errorf(format string, args ...any) { l.out(fmt.Sprintf(format, args...)) }
