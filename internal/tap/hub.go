package tap

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// Bounds of the hub.
const (
	// MaxSessions bounds the taps running at once on one control plane.
	MaxSessions = 16
	// sessionQueue is a session's buffer of items for its viewer; a viewer
	// that falls behind loses items, counted as skipped.
	sessionQueue = 4096
	// memberQueue is a proxy stream's buffer of tap requests. They are
	// rare; a stream that cannot take them is closed (the proxy then stops
	// all its taps and reconnects).
	memberQueue = 64
)

// ErrTooManyTaps is returned by Start when MaxSessions run.
var ErrTooManyTaps = errors.New("tap: too many taps running on this control plane")

// Hub relays taps between viewers (the admin API) and the proxies'
// Tap streams: a session started for a service is sent to every proxy of
// that service connected now or later, the events those proxies send go
// to the session, and a stopped session is stopped on its proxies.
type Hub struct {
	log      *slog.Logger
	mu       sync.Mutex
	members  map[string]*member // by node id
	sessions map[string]*Session
}

type member struct {
	node, service string
	reqs          chan *meshv1.TapRequest
	kicked        chan struct{}
	kickOnce      sync.Once
}

func (m *member) kick() { m.kickOnce.Do(func() { close(m.kicked) }) }

// send queues r for the proxy, or closes its stream when it cannot keep up.
func (m *member) send(r *meshv1.TapRequest) {
	select {
	case m.reqs <- r:
	default:
		m.kick()
	}
}

// NewHub returns an empty hub.
func NewHub(log *slog.Logger) *Hub {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Hub{log: log.With("component", "tap"), members: map[string]*member{}, sessions: map[string]*Session{}}
}

// Item is one thing a session's viewer gets: an event from a proxy, or a
// count of requests skipped there (over the rate, or a full queue).
type Item struct {
	Node    string
	Event   *meshv1.TapEvent
	Skipped uint64
}

// Session is one running tap, as its viewer sees it.
type Session struct {
	id      string
	service string
	req     *meshv1.TapRequest
	items   chan Item
	// lost counts items dropped because the viewer fell behind.
	lost    atomic.Uint64
	proxies int
	hub     *Hub
	stop    sync.Once
}

// ID is the session's tap id.
func (s *Session) ID() string { return s.id }

// Items are the events and skip counts; never closed (Stop ends it).
func (s *Session) Items() <-chan Item { return s.items }

// Proxies is how many proxies of the service the tap started on.
func (s *Session) Proxies() int { return s.proxies }

// TakeLost returns how many items the viewer missed since the last call.
func (s *Session) TakeLost() uint64 { return s.lost.Swap(0) }

// Stop stops the tap on every proxy running it.
func (s *Session) Stop() {
	s.stop.Do(func() {
		h := s.hub
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.sessions, s.id)
		stop := &meshv1.TapRequest{TapId: s.id, Stop: true}
		for _, m := range h.members {
			if m.service == s.service {
				m.send(stop)
			}
		}
		h.log.Info("tap stopped", "id", s.id, "service", s.service)
	})
}

// Start runs a tap of service (name.namespace) with req's filter and rate
// (its tap_id is chosen here) on the service's proxies.
func (h *Hub) Start(service string, req *meshv1.TapRequest) (*Session, error) {
	r := &meshv1.TapRequest{PathPrefix: req.GetPathPrefix(), Method: req.GetMethod(), To: req.GetTo(), MaxRps: req.GetMaxRps()}
	if r.MaxRps == 0 {
		r.MaxRps = DefaultMaxRPS
	}
	if r.MaxRps > MaxMaxRPS {
		return nil, fmt.Errorf("%w: max_rps %d is over %d", ErrInvalid, r.MaxRps, MaxMaxRPS)
	}
	if _, err := FilterOf(r); err != nil {
		return nil, err
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("tap: id: %w", err)
	}
	r.TapId = hex.EncodeToString(b[:])
	s := &Session{id: r.TapId, service: service, req: r, items: make(chan Item, sessionQueue), hub: h}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.sessions) >= MaxSessions {
		return nil, fmt.Errorf("%w (%d); stop one first", ErrTooManyTaps, MaxSessions)
	}
	h.sessions[s.id] = s
	for _, m := range h.members {
		if m.service == service {
			m.send(r)
			s.proxies++
		}
	}
	h.log.Info("tap started", "id", s.id, "service", service, "proxies", s.proxies, "path", r.PathPrefix, "method", r.Method, "to", r.To)
	return s, nil
}

// Join adds a proxy's Tap stream: it gets the start of every running tap
// of its service now, and of later ones on requests. kicked closes when
// the stream must end because it could not keep up. leave removes it.
func (h *Hub) Join(node, service string) (requests <-chan *meshv1.TapRequest, kicked <-chan struct{}, leave func()) {
	m := &member{node: node, service: service, reqs: make(chan *meshv1.TapRequest, memberQueue), kicked: make(chan struct{})}
	h.mu.Lock()
	if old := h.members[node]; old != nil {
		old.kick() // the same proxy reconnected: its old stream is done
	}
	h.members[node] = m
	for _, s := range h.sessions {
		if s.service == service {
			m.send(s.req)
		}
	}
	h.mu.Unlock()
	return m.reqs, m.kicked, func() {
		h.mu.Lock()
		if h.members[node] == m {
			delete(h.members, node)
		}
		h.mu.Unlock()
	}
}

// Deliver hands a proxy's events to their sessions. An event for a
// session of another service (or none) is dropped: a proxy shows only its
// own traffic to taps of its own service.
func (h *Hub) Deliver(node string, msg *meshv1.TapEvents) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.members[node]
	if m == nil {
		return
	}
	for _, ev := range msg.GetEvents() {
		if s := h.sessions[ev.GetTapId()]; s != nil && s.service == m.service {
			s.offer(Item{Node: node, Event: ev})
		}
	}
	for _, sk := range msg.GetSkipped() {
		if s := h.sessions[sk.GetTapId()]; s != nil && s.service == m.service {
			s.offer(Item{Node: node, Skipped: sk.GetCount()})
		}
	}
}

func (s *Session) offer(it Item) {
	select {
	case s.items <- it:
	default:
		n := it.Skipped
		if it.Event != nil {
			n = 1
		}
		s.lost.Add(n)
	}
}
