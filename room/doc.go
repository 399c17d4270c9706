// Package room is the layer above the media core (package rtc): users,
// their devices, the conversations that group them, the limits on all of
// these, and the policies that bind subscribers' down-tracks to publishers'
// up-tracks.
//
// Every signalling front-end shares one Manager. Membership belongs to a
// user, not to a connection: all devices of a user follow the user's
// conversation. The speaker policy (speakers.go) gives each receiving
// device's down-tracks ("slots") the conversation's currently active
// speakers; each conversation recomputes it on a goroutine of its own, and
// the packet path reads only the immutable snapshot it publishes on every
// Track (Track.Targets). With a mixing stage (Config.Mixing, mixing.go),
// a device with fewer slots than the active speakers it would hear gets
// the others mixed on its last slot: each distinct mix is a local up-track
// the slots bind to like a speaker's, and the stage mixes a conversation
// only while one of its devices hears a mix.
//
// Locking: Manager.mu guards the maps and membership; each Conversation's mu
// guards its device and track lists and the assignment. Lock order is
// Manager.mu, then Conversation.mu. The packet path takes no Manager lock
// and no lock shared between conversations.
package room
