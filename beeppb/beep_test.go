package beeppb

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

func fullBite() *Bite {
	return &Bite{
		Key:        "conv-1",
		Start:      1_700_000_000,
		Data:       []byte("OggS\x00\x02audio"),
		User:       "u-0123456789abcdef0123456789abcdef",
		Client:     "device-1",
		DurationMs: 1500,
		Format:     FormatOggOpus,
		Seq:        42,
		StartMs:    1_700_000_000_250,
	}
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		msg  proto.Message
	}{
		{"empty bite", &Bite{}},
		{"original fields", &Bite{Key: "c", Start: 1, Data: []byte{0x80, 0x6f}}},
		{"all fields", fullBite()},
		{"rtp bite", &Bite{Key: "c", Format: FormatRTP, Data: bytes.Repeat([]byte{1}, 1200), Seq: 1 << 40}},
		{"store", &Store{Type: "bite", Bite: fullBite()}},
		{"store without bite", &Store{Type: "transcription"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := proto.Marshal(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			got := tt.msg.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(b, got); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, tt.msg) {
				t.Errorf("got %v, want %v", got, tt.msg)
			}
		})
	}
}

// originalBite hand-encodes a Bite as the original backend-protobuf did,
// with its removed field 4 (Client{key, client}) when client is set.
func originalBite(key string, start uint64, data []byte, client bool) []byte {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, key)
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, start)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, data)
	if client {
		var c []byte
		c = protowire.AppendTag(c, 1, protowire.BytesType)
		c = protowire.AppendString(c, "user")
		c = protowire.AppendTag(c, 2, protowire.BytesType)
		c = protowire.AppendString(c, "device")
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendBytes(b, c)
	}
	return b
}

// TestDecodeOriginal decodes bites written by the original backend with
// the new type.
func TestDecodeOriginal(t *testing.T) {
	tests := []struct {
		name   string
		client bool
	}{
		{"three fields", false},
		{"with removed field 4", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := []byte{0x80, 0x6f, 0, 1, 2}
			var got Bite
			if err := proto.Unmarshal(originalBite("conv", 1_700_000_000, data, tt.client), &got); err != nil {
				t.Fatal(err)
			}
			want := &Bite{Key: "conv", Start: 1_700_000_000, Data: data}
			got.ProtoReflect().SetUnknown(nil) // field 4 stays unknown
			if !proto.Equal(&got, want) {
				t.Errorf("got %v, want %v", &got, want)
			}
		})
	}
	// A new Bite with only the original fields encodes as the original did.
	b, err := proto.Marshal(&Bite{Key: "conv", Start: 7, Data: []byte{1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	if want := originalBite("conv", 7, []byte{1, 2}, false); !bytes.Equal(b, want) {
		t.Errorf("encoding % x, want % x", b, want)
	}
}

// TestOriginalDecodesNew decodes a new Bite the way an original consumer
// does: reading fields 1-3 and skipping the others.
func TestOriginalDecodesNew(t *testing.T) {
	in := fullBite()
	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}

	// By hand, with protowire.
	var key string
	var start uint64
	var data []byte
	seen := map[protowire.Number]bool{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatal(protowire.ParseError(n))
		}
		b = b[n:]
		seen[num] = true
		switch {
		case num == 1 && typ == protowire.BytesType:
			key, n = protowire.ConsumeString(b)
		case num == 2 && typ == protowire.VarintType:
			start, n = protowire.ConsumeVarint(b)
		case num == 3 && typ == protowire.BytesType:
			data, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			t.Fatal(protowire.ParseError(n))
		}
		b = b[n:]
	}
	if key != in.Key || start != in.Start || !bytes.Equal(data, in.Data) {
		t.Errorf("old fields: %q %d %q, want %q %d %q", key, start, data, in.Key, in.Start, in.Data)
	}
	if seen[4] {
		t.Error("new Bite uses the removed field 4")
	}
	for _, num := range []protowire.Number{5, 6, 7, 8, 9, 10} {
		if !seen[num] {
			t.Errorf("field %d missing", num)
		}
	}

	// With the protobuf runtime and the original schema.
	old := originalSchema(t)
	msg := dynamicpb.NewMessage(old)
	b, _ = proto.Marshal(in)
	if err := proto.Unmarshal(b, msg); err != nil {
		t.Fatal(err)
	}
	f := old.Fields()
	if msg.Get(f.ByName("key")).String() != in.Key ||
		msg.Get(f.ByName("start")).Uint() != in.Start ||
		!bytes.Equal(msg.Get(f.ByName("data")).Bytes(), in.Data) {
		t.Errorf("original schema decoded %v", msg)
	}
}

// originalSchema builds the descriptor of the original three-field Bite.
func originalSchema(t *testing.T) protoreflect.MessageDescriptor {
	t.Helper()
	field := func(name string, num int32, typ descriptorpb.FieldDescriptorProto_Type) *descriptorpb.FieldDescriptorProto {
		return &descriptorpb.FieldDescriptorProto{
			Name:     proto.String(name),
			JsonName: proto.String(name),
			Number:   proto.Int32(num),
			Type:     typ.Enum(),
			Label:    descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
		}
	}
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name:    proto.String("original/bite.proto"),
		Package: proto.String("original"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("Bite"),
			Field: []*descriptorpb.FieldDescriptorProto{
				field("key", 1, descriptorpb.FieldDescriptorProto_TYPE_STRING),
				field("start", 2, descriptorpb.FieldDescriptorProto_TYPE_UINT64),
				field("data", 3, descriptorpb.FieldDescriptorProto_TYPE_BYTES),
			},
		}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return fd.Messages().Get(0)
}

func TestStoreWire(t *testing.T) {
	inner := originalBite("conv", 9, []byte{3}, false)
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, "bite")
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, inner)
	var got Store
	if err := proto.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := &Store{Type: "bite", Bite: &Bite{Key: "conv", Start: 9, Data: []byte{3}}}
	if !proto.Equal(&got, want) {
		t.Errorf("got %v, want %v", &got, want)
	}
}

func TestReservedField4(t *testing.T) {
	fd := (&Bite{}).ProtoReflect().Descriptor()
	if fd.Fields().ByNumber(4) != nil || !fd.ReservedRanges().Has(4) {
		t.Error("Bite field 4 must stay reserved")
	}
}

func BenchmarkMarshalBite(b *testing.B) {
	bite := fullBite()
	bite.Data = bytes.Repeat([]byte{0x5a}, 20<<10)
	size := proto.Size(bite)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := proto.Marshal(bite); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMarshalBiteAppend(b *testing.B) {
	bite := fullBite()
	bite.Data = bytes.Repeat([]byte{0x5a}, 20<<10)
	buf := make([]byte, 0, proto.Size(bite))
	b.SetBytes(int64(cap(buf)))
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = (proto.MarshalOptions{}).MarshalAppend(buf[:0], bite); err != nil {
			b.Fatal(err)
		}
	}
}
