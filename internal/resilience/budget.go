package resilience

import (
	"sync"
	"time"
)

// Budget is a retry budget as Linkerd (and Finagle, and tower's TpsBudget)
// define it: every request deposits Ratio of a retry, every retry withdraws
// one, and deposits and withdrawals count only while they are younger than
// TTL; on top, MinPerSecond·TTL retries are always in reserve. So over any
// TTL window retries stay at most Ratio × requests + MinPerSecond × TTL, and
// a failing backend cannot be hit by a retry storm. Safe for concurrent use.
type Budget struct {
	deposit, withdraw, reserve int64 // in milli-retries

	mu     sync.Mutex
	slot   time.Duration // TTL / budgetSlots
	epoch  time.Time     // start of slot index 0
	cur    int64         // the slot index now being filled
	slots  [budgetSlots]int64
	window int64 // sum of slots
}

// budgetSlots is how finely the TTL window slides (tower uses 10).
const budgetSlots = 10

// Linkerd's defaults.
const (
	DefaultRetryRatio          = 0.2
	DefaultMinRetriesPerSecond = 10
	DefaultBudgetTTL           = 10 * time.Second
)

// NewBudget returns a budget allowing ratio retries per request plus
// minPerSecond retries per second, over a ttl window (ttl ≥ 1 ms; less is
// taken as the default).
func NewBudget(ratio float64, minPerSecond uint32, ttl time.Duration) *Budget {
	if ttl < time.Millisecond {
		ttl = DefaultBudgetTTL
	}
	return &Budget{
		deposit:  int64(ratio * 1000),
		withdraw: 1000,
		reserve:  int64(float64(minPerSecond)*ttl.Seconds()) * 1000,
		slot:     ttl / budgetSlots,
		epoch:    time.Now(),
	}
}

// Deposit records one request (a first attempt).
func (b *Budget) Deposit() {
	if b.deposit == 0 {
		return
	}
	b.mu.Lock()
	b.advance()
	b.slots[b.cur%budgetSlots] += b.deposit
	b.window += b.deposit
	b.mu.Unlock()
}

// Withdraw takes one retry from the budget, or reports false when the
// budget is spent (the request must not be retried).
func (b *Budget) Withdraw() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	if b.window+b.reserve < b.withdraw {
		return false
	}
	b.slots[b.cur%budgetSlots] -= b.withdraw
	b.window -= b.withdraw
	return true
}

// advance expires the slots older than the window. Called with mu held.
func (b *Budget) advance() {
	now := int64(time.Since(b.epoch) / b.slot)
	if now <= b.cur {
		return
	}
	n := min(now-b.cur, budgetSlots)
	for i := int64(1); i <= n; i++ {
		s := &b.slots[(b.cur+i)%budgetSlots]
		b.window -= *s
		*s = 0
	}
	b.cur = now
}
