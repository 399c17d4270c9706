package beeppb

import (
	"testing"

	"google.golang.org/protobuf/proto"
)

// FuzzBite decodes arbitrary bytes as Bite and Store, and re-encodes what
// decodes: nothing may panic, and a decoded message must survive a round
// trip.
func FuzzBite(f *testing.F) {
	b, _ := proto.Marshal(&Bite{Key: "c", Start: 1, StartMs: 1000, Data: []byte{1, 2}, User: "u", Seq: 3})
	f.Add(b)
	s, _ := proto.Marshal(&Store{Type: "bite", Bite: &Bite{Key: "c"}})
	f.Add(s)
	f.Fuzz(func(t *testing.T, data []byte) {
		var bite Bite
		if proto.Unmarshal(data, &bite) == nil {
			out, err := proto.Marshal(&bite)
			if err != nil {
				t.Fatal(err)
			}
			var again Bite
			if err := proto.Unmarshal(out, &again); err != nil || !proto.Equal(&bite, &again) {
				t.Fatalf("round trip: %v", err)
			}
		}
		var store Store
		_ = proto.Unmarshal(data, &store)
	})
}
