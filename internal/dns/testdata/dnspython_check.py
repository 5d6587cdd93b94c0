"""Checks the Trellis DNS server with dnspython, as a Python client would use it.

Usage: python3 dnspython_check.py HOST PORT
The mesh is the one TestDNSPython sets up (see tools_test.go). Prints one
"ok <check>" line per check; exits 1 at the first failure.
"""
import sys

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

host, port = sys.argv[1], int(sys.argv[2])
Z = "svc.trellis.local."

r = dns.resolver.Resolver(configure=False)
r.nameservers = [host]
r.port = port
r.lifetime = 5


def check(name, cond, detail=""):
    if not cond:
        print("FAIL", name, detail)
        sys.exit(1)
    print("ok", name)


def raw(qname, rdtype, tcp=False, **kw):
    q = dns.message.make_query(qname, rdtype, **kw)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, host, port=port, timeout=5)


a = r.resolve("orders.default." + Z, "A")
check("A", {x.address for x in a} == {"127.0.0.1"}, a.rrset)
check("A ttl", a.rrset.ttl == 5, a.rrset.ttl)

short = r.resolve("orders.default.", "A")
check("short A", {x.address for x in short} == {"127.0.0.1"}, short.rrset)

srv = r.resolve("_grpc._tcp.orders.default." + Z, "SRV")
check("SRV ports", sorted(x.port for x in srv) == [15001, 15002], srv.rrset)
for x in srv:
    t = r.resolve(x.target, "A")
    check("SRV target resolves " + x.target.to_text(), [y.address for y in t] == ["127.0.0.1"])

try:
    r.resolve("payments.default." + Z, "A")
    check("NXDOMAIN", False, "answered")
except dns.resolver.NXDOMAIN:
    check("NXDOMAIN", True)

try:
    r.resolve("orders.default." + Z, "AAAA")
    check("NODATA", False, "answered")
except dns.resolver.NoAnswer:
    check("NODATA", True)
m = raw("orders.default." + Z, "AAAA")
check("NODATA has SOA", m.rcode() == dns.rcode.NOERROR and m.authority and m.authority[0].rdtype == dns.rdatatype.SOA, m)
check("AA", m.flags & dns.flags.AA)

m = raw("example.com.", "A")
check("REFUSED", m.rcode() == dns.rcode.REFUSED, dns.rcode.to_text(m.rcode()))

m = raw("trellis.local.", "AXFR", tcp=True)
check("AXFR REFUSED", m.rcode() == dns.rcode.REFUSED, dns.rcode.to_text(m.rcode()))

m = raw("big.default." + Z, "A")
check("UDP TC", m.flags & dns.flags.TC and len(m.answer[0] if m.answer else []) < 200)
m = raw("big.default." + Z, "A", tcp=True)
check("TCP all", len(m.answer[0]) == 200, len(m.answer[0]) if m.answer else 0)
big = r.resolve("big.default." + Z, "A")
check("resolver falls back to TCP", len(big) == 200, len(big))

m = raw("big.default." + Z, "A", use_edns=0, payload=4096)
check("EDNS0 4096 fits", not m.flags & dns.flags.TC and len(m.answer[0]) == 200 and m.edns == 0, m.flags)
