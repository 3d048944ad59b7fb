#!lua name=chatfleet_1
--[[
chatfleet Redis Functions library, version 1.

Every state change of a turn is one function call here, so it is atomic on one node and, because
every key of a partition carries the partition's hash tag, in Redis Cluster too.

Key conventions (the Rust side builds the names in src/keys.rs; these functions derive the rest):
  KEYS[1] of every session function is the session *base* name, `<prefix>:{pNN}:s:<tenant>:<sid>`.
  It is not a key itself: it names the slot, and the session's keys hang off it:
    <base>:meta               HASH   epoch, seq (last event seq), active (turn id), created
    <base>:log                STREAM client-visible events; entry id "<seq>-0", field e = event
    <base>:hist               LIST   conversation messages (msgpack), trimmed to hist_max
    <base>:dedupe             HASH   client_msg_id -> turn id
    <base>:ch                 sharded pub/sub channel; message = msgpack [seq, event, epoch]
    <base>:turn:<tid>         HASH   status, cmid, text (the user's), worker, attempt, lease, cancel,
                                     eid, epoch, useq, and for audit upstream, model, template
    <base>:turn:<tid>:text    STRING partial assistant text (APPEND is O(1); a hash field is not)
    <base>:turn:<tid>:tools   HASH   tool call records of the turn (msgpack), see tool_status
    <base>:summary            HASH   epoch, upto, text, template: summary of older history
    <base>:flags              SET    session flags for routing, kept by the application
  Derived keys share the base's hash tag, so they live in the slot that KEYS[1] routes to.

Payloads: events and history messages are MessagePack maps carrying v = 1. src/payload.rs
mirrors their shapes; this file is the authority.

Time: every lease decision uses the server clock (TIME), so worker clocks may disagree freely.

Invariants kept here (docs/architecture.md):
  (I1) fencing: emit, heartbeat and finish_turn refuse a caller whose attempt is not current or
       whose turn is not running;
  (I2) the user message is stored (log + hist) before enqueue_turn returns, hence before the ack;
  (I3) each event gets meta.seq + 1, in one script with its XADD, so seqs have no gaps;
  (I4) a turn leaves `running`/`queued` exactly once, to done, error, cancelled or dead.
]]

local TERMINAL = { done = true, error = true, cancelled = true, dead = true }

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Server time in ms (a number, for leases) and in µs as a decimal string (exact; a Lua number
-- would be formatted as a float), for stage timings below a millisecond such as the queue wait.
-- One TIME call for both.
local function clock()
  local t = redis.call('TIME')
  local us = tonumber(t[2])
  return tonumber(t[1]) * 1000 + math.floor(us / 1000), t[1] .. string.format('%06d', us)
end

-- Appends one client-visible event: next seq, log entry, live publish. Returns the seq.
-- `epoch`: the session epoch when the caller already read it (saves a lookup per event).
local function append_event(base, ev, log_max, epoch)
  local seq = redis.call('HINCRBY', base .. ':meta', 'seq', 1)
  local body = cmsgpack.pack(ev)
  redis.call('XADD', base .. ':log', 'MAXLEN', '~', log_max, seq .. '-0', 'e', body)
  -- The epoch rides along so a live connection notices a lost-and-recreated session at once.
  epoch = epoch or redis.call('HGET', base .. ':meta', 'epoch')
  redis.call('SPUBLISH', base .. ':ch', cmsgpack.pack({ seq, body, epoch }))
  return seq
end

-- Returns the session epoch, creating the session when its meta is missing. A missing meta means
-- the session's state was lost (TTL, eviction, a restart without persistence): whatever is left of
-- it is dropped and a new epoch starts, so a client never gets a replay that mixes two histories.
local function ensure_meta(base, epoch_candidate, now)
  local meta = base .. ':meta'
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch then
    return epoch
  end
  redis.call('DEL', base .. ':log', base .. ':hist', base .. ':dedupe')
  redis.call('HSET', meta, 'epoch', epoch_candidate, 'seq', 0, 'created', now)
  return epoch_candidate
end

-- Refreshes the session's TTL. Called when a turn is enqueued and when a client opens the
-- session, not on every write: a key keeps its TTL when it is written (HSET, XADD, RPUSH), so
-- once per turn is enough, and a turn lasts far less than the TTL. The one key a turn creates
-- later, its partial text, gets its TTL when emit creates it.
local function touch(base, tid, ttl)
  redis.call('EXPIRE', base .. ':meta', ttl)
  redis.call('EXPIRE', base .. ':log', ttl)
  redis.call('EXPIRE', base .. ':hist', ttl)
  redis.call('EXPIRE', base .. ':dedupe', ttl)
  if tid then
    redis.call('EXPIRE', base .. ':turn:' .. tid, ttl)
  end
end

local function push_hist(base, msg, hist_max)
  if redis.call('RPUSH', base .. ':hist', cmsgpack.pack(msg)) > hist_max then
    redis.call('LTRIM', base .. ':hist', -hist_max, -1)
  end
end

local function clear_active(base, tid)
  if redis.call('HGET', base .. ':meta', 'active') == tid then
    redis.call('HDEL', base .. ':meta', 'active')
  end
end

-- The turn stream holds only turns waiting or running: an ended turn's entry is acked and deleted.
local function ack_del(stream, group, eid)
  redis.call('XACK', stream, group, eid)
  redis.call('XDEL', stream, eid)
end

-- Ends a turn: final event, assistant message into history, active cleared. The caller acks.
local function end_turn(base, tid, outcome, ev, log_max, hist_max, now, epoch)
  local tkey = base .. ':turn:' .. tid
  local text = redis.call('GET', tkey .. ':text') or ''
  if text ~= '' or outcome == 'done' then
    push_hist(base, { v = 1, role = 'assistant', turn_id = tid, text = text, status = outcome }, hist_max)
  end
  local seq = append_event(base, ev, log_max, epoch)
  redis.call('HSET', tkey, 'status', outcome, 'finished', now, 'fseq', seq)
  redis.call('DEL', tkey .. ':text')
  clear_active(base, tid)
  return seq
end

--[[ enqueue_turn: the gateway turns a client `send` into a turn.
KEYS: base, turns stream of the partition
ARGV: tid, client_msg_id, text, epoch_candidate, ttl_s, log_max, hist_max, opts (opaque bytes),
      traceparent (W3C; rides in the stream entry so the worker joins the gateway's trace),
      wake ('0': no wake-up publish, the workers block on the streams (standalone); else publish)
Returns {status, turn_id, seq, epoch}; status is
  new   the message is stored and the turn queued; seq is the user_message event's seq
  dup   client_msg_id was seen: the original turn id and seq, nothing written (a retried send)
  busy  another turn of the session is active; turn_id names it, nothing written
Atomic because dedupe, the busy check, seq assignment and the stream entry must not interleave
with another gateway's send for the same session.
]]
local function enqueue_turn(keys, args)
  local base, stream = keys[1], keys[2]
  local tid, cmid, text = args[1], args[2], args[3]
  local ttl, log_max, hist_max = tonumber(args[5]), args[6], tonumber(args[7])
  local now, now_us = clock()
  local epoch = ensure_meta(base, args[4], now)
  local existing = redis.call('HGET', base .. ':dedupe', cmid)
  if existing then
    local useq = redis.call('HGET', base .. ':turn:' .. existing, 'useq')
    return { 'dup', existing, tonumber(useq or 0), epoch }
  end
  local active = redis.call('HGET', base .. ':meta', 'active')
  if active then
    return { 'busy', active, 0, epoch }
  end
  local seq = append_event(base,
    { v = 1, type = 'user_message', turn_id = tid, client_msg_id = cmid, text = text }, log_max, epoch)
  push_hist(base, { v = 1, role = 'user', turn_id = tid, text = text }, hist_max)
  local tp = args[9] or ''
  local eid = redis.call('XADD', stream, '*', 'b', base, 't', tid, 'tp', tp)
  -- Wake-up for workers in Redis Cluster, which cannot block on all partitions in one read; the
  -- channel shares the stream's hash tag, so this stays in the slot.
  if args[10] ~= '0' then
    redis.call('SPUBLISH', stream .. ':wake', '1')
  end
  -- The user's text stays with the turn so an operator can replay a dead-lettered turn.
  redis.call('HSET', base .. ':turn:' .. tid, 'status', 'queued', 'cmid', cmid, 'attempt', 0,
    'eid', eid, 'epoch', epoch, 'useq', seq, 'created', now, 'created_us', now_us, 'opts', args[8],
    'text', text, 'tp', tp)
  redis.call('HSET', base .. ':dedupe', cmid, tid)
  redis.call('HSET', base .. ':meta', 'active', tid)
  touch(base, tid, ttl)
  return { 'new', tid, seq, epoch }
end

--[[ start_turn: a worker begins a delivered turn.
KEYS: base, turns stream
ARGV: tid, entry id, group, worker id, lease_ms, hist_n, log_max
Returns
  {'run', attempt, history (list of msgpack), opts, created_us, started_us, epoch, flags,
   summary_upto, summary_text, tool records}                           queued -> running
      created_us, started_us  server time (µs, decimal strings) of enqueue and of this start
      epoch                   the session epoch (summaries are written against it)
      flags                   members of <base>:flags (a SET the application or an operator
                              maintains; routing rules match them)
      summary_*               <base>:summary (HASH epoch, upto, text, template) when it belongs to
                              the current epoch, else '' and '': a summary of older history, up to
                              turn id `upto`
      tool records            values of <base>:turn:<tid>:tools (msgpack), written by earlier
                              attempts
  {'skip', status}   the turn ended (cancelled while queued, or finished): entry acked and deleted
  {'gone'}           the turn hash is gone (TTL, lost state): entry acked and deleted
  {'held'}           another attempt is running it: leave the entry, reclaim decides
Atomic so that exactly one worker moves a turn to running, and the attempt it gets fences every
later write. It also returns everything else the attempt reads before calling the model, so the
first token waits for one round trip here, not two.
]]
local function start_turn(keys, args)
  local base, stream = keys[1], keys[2]
  local tid, eid, group, worker = args[1], args[2], args[3], args[4]
  local tkey = base .. ':turn:' .. tid
  local st = redis.call('HMGET', tkey, 'status', 'attempt', 'epoch', 'created', 'opts', 'created_us')
  local status = st[1]
  local epoch = redis.call('HGET', base .. ':meta', 'epoch')
  if not status or epoch ~= st[3] then
    ack_del(stream, group, eid)
    return { 'gone' }
  end
  if TERMINAL[status] then
    ack_del(stream, group, eid)
    return { 'skip', status }
  end
  if status ~= 'queued' then
    return { 'held' }
  end
  local now, started_us = clock()
  local attempt = tonumber(st[2]) + 1
  redis.call('HSET', tkey, 'status', 'running', 'worker', worker, 'attempt', attempt,
    'lease', now + tonumber(args[5]), 'started', now)
  append_event(base, { v = 1, type = 'turn_started', turn_id = tid, attempt = attempt }, args[7], epoch)
  local hist = redis.call('LRANGE', base .. ':hist', -tonumber(args[6]), -1)
  local flags = redis.call('SMEMBERS', base .. ':flags')
  local s = redis.call('HMGET', base .. ':summary', 'epoch', 'upto', 'text')
  local upto, text = '', ''
  if s[1] and s[1] == epoch then
    upto, text = s[2] or '', s[3] or ''
  end
  local records = redis.call('HVALS', tkey .. ':tools')
  -- A turn enqueued before created_us existed has only its ms stamp.
  local created_us = st[6] or (st[4] .. '000')
  return { 'run', attempt, hist, st[5] or '', created_us, started_us, epoch, flags, upto, text, records }
end

-- Fence check shared by emit, tool_status, heartbeat, finish_turn and release_turn. Returns the
-- turn's cancel flag ('0' or '1') and the session epoch, or false when the caller no longer owns
-- the turn.
-- With abandon_ms > 0 (the tenant's disconnect policy is `cancel`), a session that no client has
-- been attached to for abandon_ms gets its running turn's cancel flag set here.
local function fenced_turn(base, tkey, attempt, abandon_ms)
  local st = redis.call('HMGET', tkey, 'status', 'attempt', 'cancel', 'epoch')
  if st[1] ~= 'running' or st[2] ~= attempt then
    return false
  end
  local meta = redis.call('HMGET', base .. ':meta', 'epoch', 'conns', 'detached')
  if meta[1] ~= st[4] then
    return false
  end
  local cancel = st[3] or '0'
  abandon_ms = tonumber(abandon_ms or 0) or 0
  if cancel ~= '1' and abandon_ms > 0 and meta[3] and tonumber(meta[2] or 0) <= 0
      and now_ms() - tonumber(meta[3]) >= abandon_ms then
    redis.call('HSET', tkey, 'cancel', 1, 'cancel_at', now_ms(), 'cancel_reason', 'disconnected')
    cancel = '1'
  end
  return cancel, meta[1]
end

--[[ emit: a worker appends a delta of the running turn.
KEYS: base
ARGV: tid, attempt, text, lease_ms, log_max, abandon_ms (0 = keep generating when nobody watches),
      ttl_s (given to the partial text key when this delta creates it)
      [, upstream, model, template]  optional: who answered this round (as turn_audit), recorded
      with the delta so the audit costs no round trip of its own
Returns {seq, cancel}: seq = 0 when fenced (the caller lost the turn and must stop writing);
cancel = 1 when the user asked to stop, or nobody watched for abandon_ms. Extends the lease.
Atomic so that the fence check and the write cannot be split by a reclaim (I1).
]]
local function emit(keys, args)
  local base = keys[1]
  local tid, attempt, text = args[1], args[2], args[3]
  local tkey = base .. ':turn:' .. tid
  local cancel, epoch = fenced_turn(base, tkey, attempt, args[6])
  if not cancel then
    return { 0, 0 }
  end
  local seq = append_event(base, { v = 1, type = 'delta', turn_id = tid, text = text }, args[5], epoch)
  if redis.call('APPEND', tkey .. ':text', text) == #text and args[7] then
    redis.call('EXPIRE', tkey .. ':text', tonumber(args[7]))
  end
  if args[8] then
    redis.call('HSET', tkey, 'lease', now_ms() + tonumber(args[4]),
      'upstream', args[8], 'model', args[9], 'template', args[10])
  else
    redis.call('HSET', tkey, 'lease', now_ms() + tonumber(args[4]))
  end
  return { seq, cancel == '1' and 1 or 0 }
end

--[[ tool_status: a worker reports a tool call's state to the client (fenced like emit).
KEYS: base
ARGV: tid, attempt, name, state, lease_ms, log_max
      [, record key, record (msgpack ToolRecord), ttl_s]  optional (added for tools): the call's
      record is stored in <base>:turn:<tid>:tools under the record key, in the same step as the
      event, so an attempt that takes the turn over knows exactly what ran and what the client saw
Returns {seq, cancel} as emit.
]]
local function tool_status(keys, args)
  local base = keys[1]
  local tid, attempt = args[1], args[2]
  local tkey = base .. ':turn:' .. tid
  local cancel, epoch = fenced_turn(base, tkey, attempt)
  if not cancel then
    return { 0, 0 }
  end
  local seq = append_event(base,
    { v = 1, type = 'tool_status', turn_id = tid, name = args[3], state = args[4] }, args[6], epoch)
  redis.call('HSET', tkey, 'lease', now_ms() + tonumber(args[5]))
  if args[7] then
    redis.call('HSET', tkey .. ':tools', args[7], args[8])
    redis.call('EXPIRE', tkey .. ':tools', tonumber(args[9]))
  end
  return { seq, cancel == '1' and 1 or 0 }
end

--[[ turn_audit: a worker records who answered the turn (fenced like emit). Added for upstreams.
KEYS: base
ARGV: tid, attempt, upstream name, model name, prompt template version
Returns 1 when recorded (turn hash fields upstream, model, template), 0 when fenced. A later
round of the same turn (after tool calls) overwrites them with whoever answered it.
]]
local function turn_audit(keys, args)
  local base = keys[1]
  local tkey = base .. ':turn:' .. args[1]
  if not fenced_turn(base, tkey, args[2]) then
    return 0
  end
  redis.call('HSET', tkey, 'upstream', args[3], 'model', args[4], 'template', args[5])
  return 1
end

--[[ put_summary: stores a summary of a session's older history, written off the streaming path.
KEYS: base
ARGV: epoch, upto (turn id of the last summarised turn), text, template version, ttl_s
Returns 1 when stored, 0 when the session moved to another epoch or the stored summary already
covers as much (turn ids are time-ordered UUIDv7, so they compare as strings). Atomic so two
summaries racing for one session keep the one that covers more.
]]
local function put_summary(keys, args)
  local base = keys[1]
  if redis.call('HGET', base .. ':meta', 'epoch') ~= args[1] then
    return 0
  end
  local key = base .. ':summary'
  local cur = redis.call('HMGET', key, 'epoch', 'upto')
  if cur[1] == args[1] and cur[2] and cur[2] >= args[2] then
    return 0
  end
  redis.call('HSET', key, 'epoch', args[1], 'upto', args[2], 'text', args[3], 'template', args[4])
  redis.call('EXPIRE', key, tonumber(args[5]))
  return 1
end

--[[ heartbeat: fenced lease extension while the model is silent.
KEYS: base
ARGV: tid, attempt, lease_ms, abandon_ms (as emit)
Returns {ok, cancel}: ok = 0 when fenced.
]]
local function heartbeat(keys, args)
  local base = keys[1]
  local tkey = base .. ':turn:' .. args[1]
  local cancel = fenced_turn(base, tkey, args[2], args[4])
  if not cancel then
    return { 0, 0 }
  end
  redis.call('HSET', tkey, 'lease', now_ms() + tonumber(args[3]))
  return { 1, cancel == '1' and 1 or 0 }
end

--[[ finish_turn: a worker ends its turn.
KEYS: base, turns stream, dead-letter stream of the partition
ARGV: tid, attempt, outcome (done|error|cancelled), group, entry id, ttl_s, log_max, hist_max,
      prompt_tokens, completion_tokens, error code, error message, dead ('1' = dead-letter it)
      [, upstream, model, template]  optional: who answered the last round, when no delta of the
      round recorded it (as emit)
      ttl_s is no longer used (enqueue_turn refreshes the TTL once per turn); it keeps its place so
      the positions of the others stay.
Returns {'ok', seq} or {'fenced'}.
Atomic so that the final event, the history entry, the active flag and the ack happen exactly once
(I4) and only for the current attempt (I1).
]]
local function finish_turn(keys, args)
  local base, stream, dlq = keys[1], keys[2], keys[3]
  local tid, attempt, outcome = args[1], args[2], args[3]
  local tkey = base .. ':turn:' .. tid
  local owned, epoch = fenced_turn(base, tkey, attempt)
  if not owned then
    return { 'fenced' }
  end
  local now = now_ms()
  local ev = { v = 1, type = outcome, turn_id = tid }
  if outcome == 'done' then
    ev.prompt_tokens = tonumber(args[9])
    ev.completion_tokens = tonumber(args[10])
  elseif outcome == 'error' then
    ev.code = args[11]
    ev.message = args[12]
  end
  if args[14] then
    redis.call('HSET', tkey, 'upstream', args[14], 'model', args[15], 'template', args[16])
  end
  local seq = end_turn(base, tid, outcome, ev, args[7], tonumber(args[8]), now, epoch)
  if args[13] == '1' then
    redis.call('XADD', dlq, '*', 'b', base, 't', tid, 'reason', args[11], 'detail', args[12],
      'attempts', attempt, 'at', now)
  end
  ack_del(stream, args[4], args[5])
  return { 'ok', seq }
end

--[[ cancel_turn: the user pressed stop.
KEYS: base
ARGV: tid, log_max, worker control channel prefix, hist_max
Returns
  {'cancelled', seq}      the turn was queued: it ends now and will never start
  {'cancelling', worker}  the turn is running: its cancel flag is set and its worker is told on
                          <prefix><worker> (a push that saves waiting for the next emit; the
                          flag stays the truth if the push is lost)
  {'ended', status}       the turn already ended
  {'unknown'}             no such turn in this session
]]
local function cancel_turn(keys, args)
  local base, tid = keys[1], args[1]
  local tkey = base .. ':turn:' .. tid
  local st = redis.call('HMGET', tkey, 'status', 'worker')
  if not st[1] then
    return { 'unknown' }
  end
  if st[1] == 'queued' then
    local seq = end_turn(base, tid, 'cancelled', { v = 1, type = 'cancelled', turn_id = tid },
      args[2], tonumber(args[4]), now_ms())
    return { 'cancelled', seq }
  end
  if st[1] == 'running' then
    redis.call('HSET', tkey, 'cancel', 1, 'cancel_at', now_ms())
    redis.call('PUBLISH', args[3] .. st[2], base .. '\n' .. tid)
    return { 'cancelling', st[2] }
  end
  return { 'ended', st[1] }
end

--[[ reclaim: one sweep of a partition for turns whose worker is gone.
KEYS: turns stream, sweep lock, dead-letter stream
ARGV: group, consumer (the sweeping worker), lock_ms, min_idle_ms, count, max_attempts,
      log_max, hist_max, ttl_s, cursor ('-' to start at the oldest pending entry),
      consumer_gc_idle_ms (0 = off)
Returns {next cursor, {{entry id, base, tid, traceparent}, ...}}: the entries now claimed by the caller, to
run like new deliveries. The cursor pages through the pending list across calls, so healthy long
turns at its head never hide expired ones behind them.
Decides on the turn's lease (server time), never on pending idle time alone, so a healthy long
turn is never taken over; idle time only pre-filters. A reclaimed running turn goes back to
queued (its old attempt is fenced from here on) and clients get `reset`. Past max_attempts the
turn is dead-lettered and clients get `error`. Entries whose payload is gone are acked and
recorded in the dead-letter stream. One sweeper per partition at a time, by the lock.
Then consumers with nothing pending that were idle for consumer_gc_idle_ms are removed (workers
that exited): checked and deleted in this one script, so no delivery can slip in between and
be destroyed with the consumer. A live worker removed by mistake is recreated by its next read.
]]
local function reclaim(keys, args)
  local stream, lock, dlq = keys[1], keys[2], keys[3]
  local group, consumer = args[1], args[2]
  local holder = redis.call('GET', lock)
  if holder and holder ~= consumer then
    return { '-', {} }
  end
  redis.call('SET', lock, consumer, 'PX', args[3])
  local now = now_ms()
  local max_attempts, log_max, hist_max, ttl = tonumber(args[6]), args[7], tonumber(args[8]), tonumber(args[9])
  local claimed = {}
  local count = tonumber(args[5])
  local pending = redis.call('XPENDING', stream, group, 'IDLE', args[4], args[10], '+', count)
  local cursor = '-'
  if #pending == count then
    cursor = '(' .. pending[#pending][1]
  end
  for _, p in ipairs(pending) do
    local eid = p[1]
    local entry = redis.call('XRANGE', stream, eid, eid)
    if #entry == 0 then
      redis.call('XACK', stream, group, eid)
      redis.call('XADD', dlq, '*', 'eid', eid, 'reason', 'payload_missing', 'at', now)
    else
      local f = entry[1][2]
      local base, tid, tp
      for i = 1, #f, 2 do
        if f[i] == 'b' then base = f[i + 1] elseif f[i] == 't' then tid = f[i + 1] elseif f[i] == 'tp' then tp = f[i + 1] end
      end
      local tkey = base .. ':turn:' .. tid
      local st = redis.call('HMGET', tkey, 'status', 'attempt', 'lease', 'cancel')
      local status = st[1]
      if not status or TERMINAL[status] then
        ack_del(stream, group, eid)
      elseif status == 'queued' or tonumber(st[3] or 0) < now then
        if status == 'running' and st[4] == '1' then
          end_turn(base, tid, 'cancelled', { v = 1, type = 'cancelled', turn_id = tid }, log_max, hist_max, now)
          ack_del(stream, group, eid)
        elseif status == 'running' and tonumber(st[2]) >= max_attempts then
          end_turn(base, tid, 'error', { v = 1, type = 'error', turn_id = tid, code = 'worker_lost',
            message = 'the turn failed on ' .. st[2] .. ' workers' }, log_max, hist_max, now)
          redis.call('XADD', dlq, '*', 'b', base, 't', tid, 'reason', 'max_attempts',
            'attempts', st[2], 'at', now)
          ack_del(stream, group, eid)
          touch(base, tid, ttl)
        else
          if status == 'running' then
            redis.call('HSET', tkey, 'status', 'queued', 'worker', '', 'lease', 0)
            redis.call('DEL', tkey .. ':text')
            append_event(base, { v = 1, type = 'reset', turn_id = tid, attempt = tonumber(st[2]) }, log_max)
          end
          redis.call('XCLAIM', stream, group, consumer, 0, eid, 'JUSTID')
          claimed[#claimed + 1] = { eid, base, tid, tp or '' }
        end
      end
    end
  end
  local gc_idle = tonumber(args[11] or 0) or 0
  if gc_idle > 0 and cursor == '-' then
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
      local name, pend, idle
      for i = 1, #c, 2 do
        if c[i] == 'name' then name = c[i + 1]
        elseif c[i] == 'pending' then pend = c[i + 1]
        elseif c[i] == 'idle' then idle = c[i + 1] end
      end
      if pend == 0 and idle >= gc_idle and name ~= consumer then
        redis.call('XGROUP', 'DELCONSUMER', stream, group, name)
      end
    end
  end
  return { cursor, claimed }
end

--[[ release_turn: a draining worker hands its running turn back without waiting for the lease.
KEYS: base
ARGV: tid, attempt, log_max
Returns 1 when released, 0 when fenced. The turn becomes queued with its lease expired, clients
get `reset`, and the next sweep hands it to another worker.
]]
local function release_turn(keys, args)
  local base, tid = keys[1], args[1]
  local tkey = base .. ':turn:' .. tid
  if not fenced_turn(base, tkey, args[2]) then
    return 0
  end
  redis.call('HSET', tkey, 'status', 'queued', 'worker', '', 'lease', 0)
  redis.call('DEL', tkey .. ':text')
  append_event(base, { v = 1, type = 'reset', turn_id = tid, attempt = tonumber(args[2]) }, args[3])
  return 1
end

--[[ open_session: a client says hello. Called after the gateway subscribed to the session channel,
so nothing published from here on is missed.
KEYS: base
ARGV: epoch_candidate, client epoch ('' if none), client last_seq ('' if none), replay_max,
      hist_n, ttl_s, attach ('1': a lasting connection (WebSocket, SSE) now watches the session;
      `detach` undoes it)
Returns
  {'replay', epoch, seq, {{seq, event}, ...}}   the events after last_seq, all still in the log
  {'snapshot', epoch, seq, history, active turn id or '', partial text, reason}
      reason: 'new' (no last_seq), 'epoch' (history was lost or is another session's),
      'trimmed' (last_seq older than the log keeps), 'future' (last_seq ahead of the session)
Atomic so that the replay or snapshot and the seq it ends at are one consistent cut.
]]
local function open_session(keys, args)
  local base = keys[1]
  local now = now_ms()
  local epoch = ensure_meta(base, args[1], now)
  if args[7] == '1' then
    redis.call('HINCRBY', base .. ':meta', 'conns', 1)
    redis.call('HDEL', base .. ':meta', 'detached')
  end
  local seq = tonumber(redis.call('HGET', base .. ':meta', 'seq'))
  local replay_max = tonumber(args[4])
  local reason = 'new'
  if args[3] ~= '' then
    local last = tonumber(args[3])
    if args[2] ~= epoch then
      reason = 'epoch'
    elseif last > seq then
      reason = 'future'
    elseif last == seq then
      touch(base, nil, tonumber(args[6]))
      return { 'replay', epoch, seq, {} }
    elseif seq - last <= replay_max then
      local entries = redis.call('XRANGE', base .. ':log', (last + 1) .. '-0', '+', 'COUNT', replay_max)
      if #entries > 0 and entries[1][1] == (last + 1) .. '-0' then
        local out = {}
        for i, e in ipairs(entries) do
          out[i] = { tonumber(string.match(e[1], '^(%d+)')), e[2][2] }
        end
        touch(base, nil, tonumber(args[6]))
        return { 'replay', epoch, seq, out }
      end
      reason = 'trimmed'
    else
      reason = 'trimmed'
    end
  end
  local hist = redis.call('LRANGE', base .. ':hist', -tonumber(args[5]), -1)
  local active = redis.call('HGET', base .. ':meta', 'active') or ''
  local partial = ''
  if active ~= '' then
    partial = redis.call('GET', base .. ':turn:' .. active .. ':text') or ''
  end
  touch(base, nil, tonumber(args[6]))
  return { 'snapshot', epoch, seq, hist, active, partial, reason }
end

--[[ detach: a lasting connection of the session closed.
KEYS: base
ARGV: (none)
Returns the number of connections still attached. When none is left, the time is recorded, and
the disconnect policy (see fenced_turn) may stop the running turn after its grace period. A gateway
that dies without detaching leaves the count too high: the policy then errs on keeping the turn.
]]
local function detach(keys, args)
  local meta = keys[1] .. ':meta'
  if not redis.call('HGET', meta, 'epoch') then
    return 0
  end
  local n = redis.call('HINCRBY', meta, 'conns', -1)
  if n <= 0 then
    redis.call('HSET', meta, 'conns', 0, 'detached', now_ms())
    n = 0
  end
  return n
end

--[[ read_log: events after a seq, for a gateway catching a connection up after a pub/sub gap.
KEYS: base
ARGV: after seq, count, epoch the connection is on
Returns {status, {{seq, event}, ...}}: 'ok'; 'epoch' when the session's epoch changed (the
connection must resync with a snapshot); 'trimmed' when after+1 is no longer in the log.
]]
local function read_log(keys, args)
  local base = keys[1]
  if redis.call('HGET', base .. ':meta', 'epoch') ~= args[3] then
    return { 'epoch', {} }
  end
  local after = tonumber(args[1])
  local entries = redis.call('XRANGE', base .. ':log', (after + 1) .. '-0', '+', 'COUNT', args[2])
  if #entries > 0 and entries[1][1] ~= (after + 1) .. '-0' then
    return { 'trimmed', {} }
  end
  local out = {}
  for i, e in ipairs(entries) do
    out[i] = { tonumber(string.match(e[1], '^(%d+)')), e[2][2] }
  end
  return { 'ok', out }
end

--[[ lead: take or keep a leader lock (e.g. the one queue-metrics exporter).
KEYS: lock
ARGV: candidate id, ttl_ms
Returns 1 when the candidate holds the lock (now renewed), else 0. Atomic so that checking the
holder and renewing cannot interleave with another candidate's take-over.
]]
local function lead(keys, args)
  local holder = redis.call('GET', keys[1])
  if holder and holder ~= args[1] then
    return 0
  end
  redis.call('SET', keys[1], args[1], 'PX', args[2])
  return 1
end

--[[
Tenant quotas (src/quota). These two functions touch only the tenant's own quota keys, which carry
the tenant hash tag `{t:<tenant>}` and never a partition's: in Redis Cluster they live in their
own slot, so they are called as separate commands next to enqueue_turn, never inside it. The cost
is a small, documented inconsistency (docs/security.md): a gateway that dies between acquire and
enqueue leaves a slot held until the caller's reconciliation or `stale_ms` frees it.

  KEYS[1]  the tenant quota base `<prefix>:{t:<tenant>}:q`; keys hang off it:
             <base>:inflight    ZSET  member "<session base>|<turn id>", score = admitted (ms)
             <base>:tpm:<min>   STRING turns admitted in that clock minute (Redis time)

cf1_quota_acquire  ARGV: member, max_inflight (0 = off), max_per_minute (0 = off), stale_ms,
                         max_listed
  returns {'ok'}
        | {'per_minute', retry_after_ms}          nothing written
        | {'inflight', now_ms, member, admitted_ms, member, admitted_ms, ...}
                                                  the oldest holders (up to max_listed), for the
                                                  caller to check against their turns' status
  Atomic so that two gateways admitting at once cannot both take the last slot.
]]
local function quota_acquire(keys, args)
  local base = keys[1]
  local member, max_inflight, max_pm = args[1], tonumber(args[2]), tonumber(args[3])
  local stale_ms, max_listed = tonumber(args[4]), tonumber(args[5])
  local now = now_ms()
  local inflight = base .. ':inflight'
  local minute = math.floor(now / 60000)
  local tpm = base .. ':tpm:' .. minute
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now - stale_ms)
  if max_pm > 0 and tonumber(redis.call('GET', tpm) or '0') >= max_pm then
    return { 'per_minute', (minute + 1) * 60000 - now }
  end
  if max_inflight > 0 and redis.call('ZSCORE', inflight, member) == false
      and redis.call('ZCARD', inflight) >= max_inflight then
    local oldest = redis.call('ZRANGE', inflight, 0, max_listed - 1, 'WITHSCORES')
    local out = { 'inflight', now }
    for i = 1, #oldest, 2 do
      out[#out + 1] = oldest[i]
      out[#out + 1] = tonumber(oldest[i + 1])
    end
    return out
  end
  redis.call('ZADD', inflight, now, member)
  redis.call('PEXPIRE', inflight, stale_ms)
  redis.call('INCR', tpm)
  redis.call('EXPIRE', tpm, 120)
  return { 'ok' }
end

--[[
cf1_quota_release  KEYS[1] the tenant quota base; ARGV: uncount ('1' also takes one turn back from
  this minute's count: the send stored nothing new), member, member, ...
  returns the number of members removed.
]]
local function quota_release(keys, args)
  local base = keys[1]
  if args[1] == '1' then
    local tpm = base .. ':tpm:' .. math.floor(now_ms() / 60000)
    if tonumber(redis.call('GET', tpm) or '0') > 0 then
      redis.call('DECR', tpm)
    end
  end
  local removed = 0
  for i = 2, #args do
    removed = removed + redis.call('ZREM', base .. ':inflight', args[i])
  end
  return removed
end

redis.register_function('cf1_enqueue_turn', enqueue_turn)
redis.register_function('cf1_lead', lead)
redis.register_function('cf1_start_turn', start_turn)
redis.register_function('cf1_emit', emit)
redis.register_function('cf1_tool_status', tool_status)
redis.register_function('cf1_turn_audit', turn_audit)
redis.register_function('cf1_put_summary', put_summary)
redis.register_function('cf1_heartbeat', heartbeat)
redis.register_function('cf1_finish_turn', finish_turn)
redis.register_function('cf1_cancel_turn', cancel_turn)
redis.register_function('cf1_reclaim', reclaim)
redis.register_function('cf1_release_turn', release_turn)
redis.register_function('cf1_open_session', open_session)
redis.register_function('cf1_detach', detach)
redis.register_function{ function_name = 'cf1_read_log', callback = read_log, flags = { 'no-writes' } }
redis.register_function('cf1_quota_acquire', quota_acquire)
redis.register_function('cf1_quota_release', quota_release)
