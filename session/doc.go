// Package session holds the router's media state: users, their devices'
// peer connections, the audio tracks those publish, the outgoing slots they
// receive on, and the conversations that group users.
//
// Every signalling front-end shares one Manager. Membership belongs to a
// user, not to a connection: all devices of a user follow the user's last
// join. Each device receives on one Slot per receiving audio m-line of its
// offer; the conversation assigns the currently active speakers to the slots
// (see Conversation.Reassign) and each Slot rewrites what it forwards into
// one continuous RTP stream.
//
// Locking: Manager.mu guards the maps and membership; each Conversation's mu
// guards its peer and track lists and the slot assignment. Lock order is
// Manager.mu, then Conversation.mu, then Slot.mu. The packet path takes no
// Manager lock and no lock shared between conversations.
package session
