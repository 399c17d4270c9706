// Package plugins runs out-of-process plugins as pipeline stages.
//
// A plugin is a separate program (written with package sdk) that the router
// starts with hashicorp/go-plugin and talks to over gRPC. Register adds the
// stage kind "plugin"; a pipeline file names a plugin like a built-in stage:
//
//   - name: recorder
//     kind: plugin
//     settings:
//     path: /usr/local/bin/beep-recorder
//     args: ["-dir", "/var/lib/beep/rec"]
//     config: {segment: 5m}
//     conversations: ["*"]
//     queue: 1024
//     batch: 32
//
// # Data path
//
// A plugin stage passes every packet on untouched. Its processor, on the
// track's goroutine, copies a packet the plugin wants into a preallocated
// item taken from a fixed pool and queues it; when the pool is empty the
// packet is dropped and counted. Nothing on that path blocks, does I/O or
// allocates once the item buffers have grown to the packet size. One
// goroutine per stage takes the items, batches them (up to batch packets,
// waiting at most flush for a batch to fill) and streams them to the plugin
// on one gRPC bidirectional stream; results come back on the same stream and
// are published on NATS.
//
// # Isolation
//
// A plugin that crashes, hangs, is slow or sends garbage costs only its own
// data: its queue overflows (counted drops), a send blocked longer than
// stall_timeout or an unanswered health check gets it killed, and a crashed
// plugin is restarted with exponential backoff (a new go-plugin client each
// time). After max_restarts consecutive failures it is disabled with an
// error log, and its stage passes packets through untouched. Its standard
// error is logged under the stage's name. Close stops it cleanly: the stream
// is half-closed, the plugin flushes, and its process is waited for (killed
// if it does not exit).
package plugins
