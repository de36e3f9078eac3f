//! The GCRA script that decides in Redis, and how its reply is read.
//!
//! # The stored value
//!
//! A budget's key holds its TAT (theoretical arrival time) on the Redis server's clock as
//! `<µs>.<nnn><unit>`: whole microseconds, the three digits of nanoseconds past them, and then
//! the nanoseconds per unit the debt was counted in when it was written. Versions before the
//! unit was stored wrote `<µs>.<nnn>` and read only the first three digits after the point, so
//! a fleet mixing versions still shares one budget (an older host ignores the unit).
//!
//! # Why the unit is stored
//!
//! A quota change or a level with another scale changes the nanoseconds per unit. The debt in
//! Redis is a time (TAT − now); read in the new unit as it stands, a lower quota would turn a
//! spent budget into a fresh one (100 units spent at 1 ms each are 100 ms of debt, which at
//! 10 ms per unit is only 10 units: 90 extra admits at once, on every key, across the fleet).
//! So the script carries the debt over *in units*, as the local limiter does: when the stored
//! unit differs from the caller's, `debt × new / old`, rounded up (never generous). Hosts whose
//! quota or level differ for a while (a configuration rolling out, levels that are per host)
//! each carry the debt over to their own unit; the number of units owed is the same whoever
//! reads it, so no change and no back-and-forth mints budget.

/// The body of the GCRA script, after `now_us` (microseconds of the server's clock) and
/// `min_ttl_ms` are set. KEYS[1]: the budget's key. ARGV: nanoseconds per unit, tolerance in
/// nanoseconds, cost in nanoseconds (integers). Returns {1, 0} when admitted, {0, wait in
/// nanoseconds} when not.
///
/// Every sum is of integers relative to now (the debt), below 2^53 for any debt under 104
/// days, so exact in Lua's doubles; microseconds since 1970 as a double (about 2^50.6) keep
/// only a quarter microsecond, which loses a cost of 0.1 µs altogether. The carry-over to
/// another unit splits the debt into whole units (exact) and a remainder below one unit
/// (scaled in doubles, then rounded up). The TTL is the time until the budget is full again.
/// A rejection writes nothing, unless it carried the debt over: then the carried debt is
/// written in the new unit, so it drains at the new quota's rate from now on (left in the old
/// unit, a lower quota's debt would drain at the higher one's until the next admission). A
/// value that cannot be read counts as a full budget (it heals itself).
macro_rules! gcra_body {
    () => {
        r#"
local unit = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local function store(d)
  local q = math.floor(d / 1000)
  local r = d - q * 1000
  if r < 0 then q = q - 1; r = r + 1000 end
  if r >= 1000 then q = q + 1; r = r - 1000 end
  redis.call('SET', KEYS[1], string.format('%.0f.%03d%.0f', now_us + q, r, unit), 'PX', math.floor(d / 1000000) + min_ttl_ms)
end
local debt = 0
local carried = false
local v = redis.call('GET', KEYS[1])
if v then
  local us, frac = string.match(v, '^(%d+)%.?(%d*)$')
  if us then
    local ns = 0
    if frac ~= '' then ns = tonumber(string.sub(frac .. '000', 1, 3)) end
    debt = (tonumber(us) - now_us) * 1000 + ns
    if debt > 0 and string.len(frac) > 3 then
      local from = tonumber(string.sub(frac, 4))
      if from and from > 0 and from ~= unit then
        local whole = math.floor(debt / from)
        local part = debt - whole * from
        debt = whole * unit + math.ceil(part * (unit / from))
        carried = true
      end
    end
  end
  if debt < 0 then debt = 0 end
end
local new_debt = debt + cost
local wait = new_debt - tolerance
if wait > 0 then
  if carried then store(debt) end
  return {0, wait}
end
store(new_debt)
return {1, 0}
"#
    };
}

/// The GCRA script on the server's clock (`TIME`), so that the hosts' own clocks never
/// disagree about the budget. A key lives one millisecond past its debt.
pub(super) const GCRA_LUA: &str = concat!(
    "local t = redis.call('TIME')\nlocal now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])\n",
    "local min_ttl_ms = 1\n",
    gcra_body!()
);

/// The same script with `now_us` given as ARGV[4], so tests can freeze the clock (and keys
/// live a minute, since Redis expires them on its real clock).
#[cfg(test)]
const GCRA_LUA_AT: &str = concat!(
    "local now_us = tonumber(ARGV[4])\nlocal min_ttl_ms = 60000\n",
    gcra_body!()
);

/// What Redis answered to one script call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    Admit,
    /// Rejected; the same request is admitted after this many nanoseconds.
    Reject(u64),
}

/// Reads the script's reply: `{1, _}` admits, `{0, wait_ns}` rejects. Anything else (another
/// shape, a negative wait) is not an answer: `None`. A wait longer than the burst's tolerance
/// (which no correct reply exceeds) is cut to it, so a wrong reply cannot ask for centuries.
pub(super) fn read_reply(v: &redis::Value, tolerance_ns: u64) -> Option<Reply> {
    let redis::Value::Array(items) = v else {
        return None;
    };
    match items.as_slice() {
        [redis::Value::Int(1), _] => Some(Reply::Admit),
        [redis::Value::Int(0), redis::Value::Int(wait)] => {
            let wait = u64::try_from(*wait).ok()?;
            Some(Reply::Reject(wait.clamp(1, tolerance_ns.max(1))))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    /// A `redis-server` on a free port of 127.0.0.1, killed on drop.
    struct Server(Child, u16);

    impl Server {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on PATH (the redis feature's tests need it)");
            let server = Server(child, port);
            for _ in 0..1000 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("redis-server did not listen on {port}");
        }

        async fn connection(&self) -> redis::aio::MultiplexedConnection {
            redis::Client::open(format!("redis://127.0.0.1:{}", self.1))
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The script of earlier versions (TAT as a double of microseconds since 1970), with
    /// `now_us` as ARGV[4] and keys living a minute: kept here only to show the drift the
    /// integer script removes.
    const FLOAT_US_LUA_AT: &str = r#"
local now = tonumber(ARGV[4])
local unit = tonumber(ARGV[1]) / 1000
local tolerance = tonumber(ARGV[2]) / 1000
local cost = tonumber(ARGV[3]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + cost
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, math.ceil(allow_at - now)}
end
local ttl = math.ceil((new_tat - now) / 1000) + 60000
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', ttl)
return {1, 0}
"#;

    /// A 2026 instant in microseconds since 1970.
    const NOW_US: u64 = 1_771_234_567_890_123;

    async fn run(
        con: &mut redis::aio::MultiplexedConnection,
        script: &str,
        key: &str,
        (unit, tolerance, cost): (u64, u64, u64),
        now_us: u64,
    ) -> (i64, i64) {
        redis::Script::new(script)
            .key(key)
            .arg(unit)
            .arg(tolerance)
            .arg(cost)
            .arg(now_us)
            .invoke_async(con)
            .await
            .unwrap()
    }

    /// Issue 14: with a unit of 100 ns (ten million per second) and a burst of 10, the float
    /// script loses every 0.1 µs cost (a double near 1.8e15 holds quarter microseconds) and
    /// admits without limit; the integer script admits exactly the burst, rejects the next
    /// with a wait of exactly one unit, and admits ten more one microsecond later.
    #[tokio::test]
    async fn sub_microsecond_costs_are_charged_exactly() {
        let server = Server::start();
        let mut con = server.connection().await;
        let q = (100, 1_000, 100);
        let mut float_admitted = 0;
        for _ in 0..100 {
            if run(&mut con, FLOAT_US_LUA_AT, "float", q, NOW_US).await.0 == 1 {
                float_admitted += 1;
            }
        }
        assert_eq!(float_admitted, 100, "the drift the float script had");

        let mut admitted = 0;
        for _ in 0..10 {
            admitted += run(&mut con, GCRA_LUA_AT, "int", q, NOW_US).await.0;
        }
        assert_eq!(admitted, 10);
        assert_eq!(run(&mut con, GCRA_LUA_AT, "int", q, NOW_US).await, (0, 100));
        let mut admitted = 0;
        for _ in 0..11 {
            admitted += run(&mut con, GCRA_LUA_AT, "int", q, NOW_US + 1).await.0;
        }
        assert_eq!(admitted, 10, "one microsecond refills exactly ten units");
        // Costs that are not whole microseconds add up exactly too: nine of 1.1 µs fill a
        // 10 µs burst to 9.9 µs, and the tenth is 1 µs over. The float script charged each
        // 1.1 µs as 1 µs (the nearest quarter) and admitted the tenth.
        let q = (1_100, 10_000, 1_100);
        for _ in 0..9 {
            assert_eq!(run(&mut con, GCRA_LUA_AT, "w", q, NOW_US).await, (1, 0));
            assert_eq!(
                run(&mut con, FLOAT_US_LUA_AT, "fw", q, NOW_US).await,
                (1, 0)
            );
        }
        assert_eq!(run(&mut con, GCRA_LUA_AT, "w", q, NOW_US).await, (0, 1_000));
        assert_eq!(
            run(&mut con, FLOAT_US_LUA_AT, "fw", q, NOW_US).await,
            (1, 0)
        );
    }

    /// A TAT written by an earlier version (`%.3f` microseconds) is read to the nanosecond,
    /// so a fleet mixing versions shares one budget; an unreadable value counts as a full
    /// budget instead of breaking the key.
    #[tokio::test]
    async fn keys_in_the_earlier_format_are_read() {
        let server = Server::start();
        let mut con = server.connection().await;
        let old = format!("{}.250", NOW_US + 5);
        let _: () = redis::cmd("SET")
            .arg("old")
            .arg(&old)
            .query_async(&mut con)
            .await
            .unwrap();
        // Debt 5,250 ns; tolerance 6,000; cost 1,000: over by 250 ns.
        let q = (1_000, 6_000, 1_000);
        assert_eq!(run(&mut con, GCRA_LUA_AT, "old", q, NOW_US).await, (0, 250));
        let _: () = redis::cmd("SET")
            .arg("junk")
            .arg("not a time")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(run(&mut con, GCRA_LUA_AT, "junk", q, NOW_US).await, (1, 0));
        let v: String = redis::cmd("GET")
            .arg("junk")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(v, format!("{}.0001000", NOW_US + 1), "<µs>.<ns><unit>");
    }

    /// The script of the version before units were stored (integer nanoseconds, `<µs>.<nnn>`),
    /// with `now_us` as ARGV[4]: kept to show that a fleet mid-upgrade shares one budget.
    const PREVIOUS_LUA_AT: &str = r#"
local now_us = tonumber(ARGV[4])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local debt = 0
local v = redis.call('GET', KEYS[1])
if v then
  local us, frac = string.match(v, '^(%d+)%.?(%d*)$')
  if us then
    local ns = 0
    if frac ~= '' then ns = tonumber(string.sub(frac .. '000', 1, 3)) end
    debt = (tonumber(us) - now_us) * 1000 + ns
  end
  if debt < 0 then debt = 0 end
end
local new_debt = debt + cost
local wait = new_debt - tolerance
if wait > 0 then
  return {0, wait}
end
local q = math.floor(new_debt / 1000)
local r = new_debt - q * 1000
redis.call('SET', KEYS[1], string.format('%.0f.%03d', now_us + q, r), 'PX', 60000)
return {1, 0}
"#;

    /// A rolling upgrade: hosts of the previous version read a key written with its unit as
    /// the same debt (they take three digits after the point and ignore the rest), and this
    /// version reads theirs (no unit: the caller's), so old and new hosts share one budget.
    #[tokio::test]
    async fn the_previous_version_and_this_one_share_a_budget() {
        let server = Server::start();
        let mut con = server.connection().await;
        let q = (1_000, 10_000, 1_000); // burst 10 of 1 µs
        for i in 0..10 {
            let script = if i % 2 == 0 {
                GCRA_LUA_AT
            } else {
                PREVIOUS_LUA_AT
            };
            assert_eq!(run(&mut con, script, "mixed", q, NOW_US).await, (1, 0));
        }
        assert_eq!(
            run(&mut con, GCRA_LUA_AT, "mixed", q, NOW_US).await,
            (0, 1_000)
        );
        assert_eq!(
            run(&mut con, PREVIOUS_LUA_AT, "mixed", q, NOW_US).await,
            (0, 1_000)
        );
        // A value this version wrote, with a unit, read by the previous one: 5,250 ns of debt.
        let _: () = redis::cmd("SET")
            .arg("new")
            .arg(format!("{}.2501000", NOW_US + 5))
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(
            run(
                &mut con,
                PREVIOUS_LUA_AT,
                "new",
                (1_000, 6_000, 1_000),
                NOW_US
            )
            .await,
            (0, 250)
        );
    }

    /// A quota ten times lower (or a level scaled to a tenth) after a spent burst: the debt of
    /// 10 units stays 10 units, so nothing is admitted (read as time it would have been 1 unit
    /// and nine admits at once); the carried debt is written in the new unit, so one new unit
    /// later exactly one request is admitted, and back at the first quota the debt is still
    /// 10 units (no refill, no drain by the change).
    #[tokio::test]
    async fn a_lower_quota_carries_the_spent_budget_over_in_units() {
        let server = Server::start();
        let mut con = server.connection().await;
        let fast = (1_000, 10_000, 1_000); // 1 µs per unit, burst 10
        let slow = (10_000, 100_000, 10_000); // 10 µs per unit, burst 10
        for _ in 0..10 {
            assert_eq!(run(&mut con, GCRA_LUA_AT, "q", fast, NOW_US).await, (1, 0));
        }
        assert_eq!(
            run(&mut con, GCRA_LUA_AT, "q", fast, NOW_US).await,
            (0, 1_000)
        );
        // Read as time, the 10 µs of debt would be one slow unit: nine admits.
        assert_eq!(
            run(&mut con, GCRA_LUA_AT, "q", slow, NOW_US).await,
            (0, 10_000)
        );
        let v: String = redis::cmd("GET")
            .arg("q")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(
            v,
            format!("{}.00010000", NOW_US + 100),
            "carried and stored"
        );
        // One slow unit later (10 µs): exactly one admit.
        let t = NOW_US + 10;
        assert_eq!(run(&mut con, GCRA_LUA_AT, "q", slow, t).await, (1, 0));
        assert_eq!(run(&mut con, GCRA_LUA_AT, "q", slow, t).await, (0, 10_000));
        // Back to the fast quota: still 10 units owed.
        assert_eq!(run(&mut con, GCRA_LUA_AT, "q", fast, t).await, (0, 1_000));
        // A debt of 7 ns at 3 ns per unit (2 units and 1 ns) is 2 × 9 + ⌈1 × 9 / 3⌉ = 21 ns at
        // 9 ns per unit; with a cost of 9 and a tolerance of 20 the wait is 10.
        let _: () = redis::cmd("SET")
            .arg("r")
            .arg(format!("{}.0073", NOW_US))
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(
            run(&mut con, GCRA_LUA_AT, "r", (9, 20, 9), NOW_US).await,
            (0, 10)
        );
    }

    /// Whatever the sequence of units (quota or level changes, hosts that disagree), the
    /// script never admits more than one burst plus what the fastest unit refills in the time
    /// that passed: a change can neither mint budget nor be played back and forth for it.
    /// Against a real Redis (frozen clock), 64 random sequences of up to 40 steps.
    #[test]
    fn no_sequence_of_unit_changes_admits_more_than_burst_and_refill() {
        let server = Server::start();
        let con = std::cell::RefCell::new(
            redis::Client::open(format!("redis://127.0.0.1:{}", server.1))
                .unwrap()
                .get_connection()
                .unwrap(),
        );
        // 20 µs to 200 µs per unit; most steps at the same instant, so that the refill (at
        // most a unit of the fastest per 20 µs) stays small against a burst.
        const UNITS: [u64; 4] = [20_000, 50_000, 110_000, 200_000];
        const BURST: u64 = 10;
        let dt_us = prop_oneof![4 => Just(0u64), 1 => 1u64..20];
        let step = (0..UNITS.len(), dt_us, 1u64..6);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 64,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let case = std::cell::Cell::new(0u32);
        runner
            .run(&prop::collection::vec(step, 1..40), |steps| {
                case.set(case.get() + 1);
                let key = format!("seq{}", case.get());
                let (mut now, mut admitted, mut elapsed_ns) = (NOW_US, 0u64, 0u64);
                for (u, dt_us, calls) in steps {
                    now += dt_us;
                    elapsed_ns += dt_us * 1_000;
                    let unit = UNITS[u];
                    for _ in 0..calls {
                        let (ok, _): (i64, i64) = redis::Script::new(GCRA_LUA_AT)
                            .key(&key)
                            .arg(unit)
                            .arg(unit * BURST)
                            .arg(unit)
                            .arg(now)
                            .invoke(&mut *con.borrow_mut())
                            .unwrap();
                        admitted += ok as u64;
                    }
                }
                let bound = BURST + elapsed_ns / UNITS[0] + 1;
                prop_assert!(admitted <= bound, "{admitted} > {bound}");
                Ok(())
            })
            .unwrap();
    }

    fn value() -> impl Strategy<Value = redis::Value> {
        let leaf = prop_oneof![
            Just(redis::Value::Nil),
            Just(redis::Value::Okay),
            any::<i64>().prop_map(redis::Value::Int),
            prop_oneof![Just(0i64), Just(1), Just(-1)].prop_map(redis::Value::Int),
            prop::collection::vec(any::<u8>(), 0..16).prop_map(redis::Value::BulkString),
            ".{0,12}".prop_map(redis::Value::SimpleString),
            any::<f64>().prop_map(redis::Value::Double),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop::collection::vec(inner, 0..4).prop_map(redis::Value::Array)
        })
    }

    proptest! {
        /// Whatever Redis (or something pretending to be Redis) answers, reading the reply
        /// never panics, and a rejection's wait stays within one burst.
        #[test]
        fn any_reply_is_read_without_panic(v in value(), tolerance in 0u64..u64::MAX) {
            match read_reply(&v, tolerance) {
                Some(Reply::Reject(wait)) => prop_assert!(wait >= 1 && wait <= tolerance.max(1)),
                Some(Reply::Admit) | None => {}
            }
        }

        #[test]
        fn the_scripts_replies_are_read(wait in 0i64..i64::MAX, tolerance in 1u64..1 << 62) {
            let admit = redis::Value::Array(vec![redis::Value::Int(1), redis::Value::Int(wait)]);
            prop_assert_eq!(read_reply(&admit, tolerance), Some(Reply::Admit));
            let reject = redis::Value::Array(vec![redis::Value::Int(0), redis::Value::Int(wait)]);
            let expect = u64::try_from(wait).unwrap().clamp(1, tolerance);
            prop_assert_eq!(read_reply(&reject, tolerance), Some(Reply::Reject(expect)));
        }
    }
}
