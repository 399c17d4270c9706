// Package beeppb holds the protobuf messages the router publishes on NATS:
// Bite, a chunk of one client's audio in a conversation, and Store, a request
// to store a bite. They extend Beep's original backend-protobuf messages
// compatibly (see beep.proto): old consumers read key, start (Unix seconds)
// and data and skip the new fields.
//
// beep.pb.go is generated and committed; regenerate it with go generate,
// which needs protoc (Debian protobuf-compiler) and
// protoc-gen-go v1.36.12 (go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12).
package beeppb

//go:generate protoc --go_out=. --go_opt=paths=source_relative beep.proto

// Values of Bite.Format.
const (
	// FormatOggOpus marks Bite.Data as a complete Ogg Opus stream.
	FormatOggOpus = "ogg-opus"
	// FormatRTP marks Bite.Data as one raw RTP packet.
	FormatRTP = "rtp"
)
