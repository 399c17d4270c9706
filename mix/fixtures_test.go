package mix

import (
	"testing"

	"github.com/beepvoice/router/internal/testmedia"
)

// The speech and tone fixtures live in internal/testmedia (the room and
// router tests of the mixing stage use them too); these are their names
// in this package's tests.
type (
	voice = testmedia.Voice
	tone  = testmedia.Tone
)

// speech is a fixture as this package's tests read it.
type speech struct {
	pcm     []float32 // the 48 kHz source the encoder was given
	packets [][]byte  // opusenc's packets, 20 ms each
	preSkip int       // decoder delay of the Ogg stream, in samples
}

var voiceA, voiceB, voiceC = testmedia.VoiceA, testmedia.VoiceB, testmedia.VoiceC

func fromTestmedia(s testmedia.Speech) speech {
	return speech{pcm: s.PCM, packets: s.Packets, preSkip: s.PreSkip}
}

// speak returns v's fixture (testmedia.Speak).
func speak(tb testing.TB, v voice) speech { return fromTestmedia(testmedia.Speak(tb, v)) }

// makeTone returns tn's fixture (testmedia.MakeTone).
func makeTone(tb testing.TB, tn tone) speech { return fromTestmedia(testmedia.MakeTone(tb, tn)) }
