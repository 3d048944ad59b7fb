#!lua name=chatfleet_3
--[[
chatfleet Redis Functions library, version 2.

Every state change of a turn happens inside one function call here, so it is atomic on one node
and, because every key of a partition carries the partition's hash tag, in Redis Cluster too.

Version 2 changes three things against version 1 (docs/architecture.md, "The write path"):
  * Group commit. Writes travel as *ops* inside one `cf3_batch` call: a process queues the ops of
    all its sessions and turns for a slot while the previous call is in flight, then sends them in
    one call. Each op is fenced and applied on its own: one fenced or failing op never fails its
    neighbours (each runs under pcall, and an op checks everything before it writes).
  * Every op is safe to resend. A Redis client resends a command that was in flight when its
    connection dropped; the function may have run, and only the reply was lost. So:
      - worker writes carry (turn, attempt, write index); the turn hash keeps the last index it
        applied (`wi`) and that write's reply (`wr`), and a repeat returns the reply unchanged;
      - `start` carries a request id; a repeat by the same request answers `run` again;
      - `open`/`detach` count connections by id (a HASH), so a repeat counts nothing twice;
      - `enq` is idempotent by client_msg_id (the dedupe hash); quotas work by member (turn id).
  * Declared keys. Every key an op touches is passed in KEYS, so Cluster routing and slot migration
    (ASK/TRYAGAIN) see the real keys, not a base name.

Keys (built by src/keys.rs; every op names a *session block* of keys at its key index k):
  k+0  <base>:meta        HASH   epoch, seq (last event seq), active (turn id), created, detached,
                                 owner (user the session is bound to, '' = shared)
  k+1  <base>:log         STREAM client-visible events; entry id "<seq>-0", field e = event
  k+2  <base>:hist        LIST   conversation messages (msgpack), trimmed to hist_max
  k+3  <base>:dedupe      HASH   client_msg_id -> "<turn id> <user_message seq>"
  k+4  <base>:dq          LIST   client_msg_ids in arrival order, to trim the dedupe hash
  k+5  <base>:conns       HASH   connection id -> attach time (lasting connections watching)
  k+6  <base>:partial     STRING partial assistant text of the active turn (APPEND is O(1))
  k+7  <base>:flags       SET    session flags for routing, kept by the application
  k+8  <base>:summary     HASH   epoch, upto, text, template: summary of older history
 and, for ops about one turn, the *turn block*:
  k+9  <base>:turn:<tid>         HASH status, cmid, text (the user's), worker, attempt, lease,
                                      cancel, eid, epoch, useq, sreq, wi, wr (JSON, readable by
                                      tools), tt, and for audit
                                      upstream, model, template
  k+10 <base>:turn:<tid>:tools   HASH tool call records of the turn (msgpack), see `tool`
 then, for ops that need them, the partition's turns stream (k+11) and dead-letter stream (k+12),
 and, when archiving is on (settings `archive_max` > 0), for every op that can end a turn (finish,
 cancel, reclaim), the partition's archive stream (k+13):
  <prefix>:{pNN}:archive  STREAM finished turns for the archivers (src/archive), see archive_turn.
 The ops `restore` and `erase` have their own layouts (see them).
  <base>:ch is the session's sharded pub/sub channel (message = msgpack [seq, event, epoch]);
  channels are not keys, and it shares the slot.

Payloads: events and history messages are MessagePack maps carrying v = 1. src/payload.rs
mirrors their shapes; this file is the authority.

Time: every lease decision uses the server clock (TIME, read once per call), so worker clocks may
disagree freely.

Invariants kept here (docs/architecture.md):
  (I1) fencing: worker writes refuse a caller whose attempt is not current or whose turn is not
       running;
  (I2) the user message is stored (log + hist) before `enq` returns, hence before the ack;
  (I3) each event gets meta.seq + 1, in one step with its XADD, so seqs have no gaps;
  (I4) a turn leaves `running`/`queued` exactly once, to done, error, cancelled or dead;
  (I5) an op applied once and sent again changes nothing and answers as the first time.
]]

local TERMINAL = { done = true, error = true, cancelled = true, dead = true }

-- Per-call context: server time and the deployment's settings (ARGV[1] of cf3_batch).
local C = {}

local function clock()
  local t = redis.call('TIME')
  local us = tonumber(t[2])
  return tonumber(t[1]) * 1000 + math.floor(us / 1000), t[1] .. string.format('%06d', us)
end

-- The keys of the op being applied, by name. One table for the whole call, refilled per op: a
-- new table per op (14 fields, grown by rehashing) cost more than the fields' assignments.
local S = {}

-- The keys of an op, by name, from its key index.
local function session_keys(keys, k)
  S.meta, S.log, S.hist, S.dedupe, S.dq = keys[k], keys[k + 1], keys[k + 2], keys[k + 3], keys[k + 4]
  S.conns, S.partial, S.flags, S.summary = keys[k + 5], keys[k + 6], keys[k + 7], keys[k + 8]
  S.turn, S.tools, S.stream, S.dlq, S.archive = keys[k + 9], keys[k + 10], keys[k + 11], keys[k + 12], keys[k + 13]
  return S
end

-- The *delta layout* of `emitc`: only the keys a delta writes (meta, log, partial text, turn).
-- Every declared key costs the call, and deltas are most of the calls. Keys it lacks are nil, so
-- an op that needs them fails loudly instead of writing elsewhere.
local function delta_keys(keys, k)
  S.meta, S.log, S.partial, S.turn = keys[k], keys[k + 1], keys[k + 2], keys[k + 3]
  S.hist, S.dedupe, S.dq, S.conns, S.flags, S.summary = nil, nil, nil, nil, nil, nil
  S.tools, S.stream, S.dlq, S.archive = nil, nil, nil, nil
  return S
end

-- The channel of a session, from its meta key.
local function channel(S)
  return string.sub(S.meta, 1, -6) .. ':ch'
end

-- Appends one client-visible event: next seq, log entry, live publish. Returns the seq.
local function append_event(S, ev, epoch)
  local seq = redis.call('HINCRBY', S.meta, 'seq', '1')
  local body = cmsgpack.pack(ev)
  redis.call('XADD', S.log, 'MAXLEN', '~', C.log_max_s, seq .. '-0', 'e', body)
  -- The epoch rides along so a live connection notices a lost-and-recreated session at once.
  -- A 3-array, [seq, body, epoch], written as its header and the packed values: no table.
  redis.call('SPUBLISH', channel(S), '\147' .. cmsgpack.pack(seq, body, epoch))
  return seq
end

-- Returns the session epoch and owner, creating the session when its meta is missing. A missing
-- meta means the session's state was lost (TTL, eviction, a restart without persistence):
-- whatever is left of it is dropped and a new epoch starts, so a client never gets a replay that
-- mixes two histories. The first opener's user owns a new session. Also returns the meta's
-- `active` turn and `tt` (when `enq` last refreshed the session's TTL), read in the same call.
local function create_meta(S, epoch_candidate, owner)
  -- A session opened through an explicit grant ('*') is shared: it has no one owner.
  if owner == '*' then
    owner = ''
  end
  redis.call('DEL', S.log, S.hist, S.dedupe, S.dq, S.conns, S.partial)
  redis.call('HSET', S.meta, 'epoch', epoch_candidate, 'seq', 0, 'created', C.now, 'owner', owner or '')
  return epoch_candidate, owner or ''
end

local function ensure_meta(S, epoch_candidate, owner)
  local m = redis.call('HMGET', S.meta, 'epoch', 'owner', 'active', 'tt')
  if m[1] then
    return m[1], m[2] or '', m[3], m[4]
  end
  return create_meta(S, epoch_candidate, owner)
end

-- A session bound to a user refuses everyone else; '' (shared) and '*' (the caller may open any
-- session of its tenant: an operator, or a token's `sessions` claim checked by the gateway) pass.
local function refused(owner, user)
  return owner ~= '' and user ~= '*' and owner ~= user
end

-- Refreshes the session's TTL: when a turn is enqueued, when a client opens the session, and
-- every ttl/4 while a turn streams (an answer longer than the TTL keeps its keys).
-- The connections hash and the partial text get theirs when they are written.
local function touch(S, with_turn)
  local ttl = C.ttl
  for _, key in ipairs({ S.meta, S.log, S.hist, S.dedupe, S.dq }) do
    redis.call('EXPIRE', key, ttl)
  end
  if with_turn then
    redis.call('EXPIRE', S.turn, ttl)
    redis.call('EXPIRE', S.partial, ttl)
  end
end

local function push_hist(S, msg)
  if redis.call('RPUSH', S.hist, cmsgpack.pack(msg)) > C.hist_max then
    redis.call('LTRIM', S.hist, -C.hist_max, -1)
  end
end

-- `active`: the meta's active turn when the caller read it in this op already (false: none).
local function clear_active(S, tid, active)
  if active == nil then
    active = redis.call('HGET', S.meta, 'active')
  end
  if active == tid then
    redis.call('HDEL', S.meta, 'active')
    redis.call('DEL', S.partial)
  end
end

-- The turn stream holds only turns waiting or running: an ended turn's entry is acked and deleted.
local function ack_del(stream, eid)
  redis.call('XACK', stream, C.group, eid)
  redis.call('XDEL', stream, eid)
end

local function dead_letter(S, ...)
  redis.call('XADD', S.dlq, 'MAXLEN', '~', C.dlq_max, '*', ...)
end

-- True when turn ends go to the archive stream. The op then declared it at k+13; a key that is
-- not an archive stream there means the caller and the settings disagree, and the op fails
-- before it writes (the key would be another op's).
local function archiving(S)
  if (tonumber(C.archive_max) or 0) <= 0 then
    return false
  end
  if not S.archive or string.sub(S.archive, -8) ~= ':archive' then
    error('archiving is on but the op declared no archive stream')
  end
  return true
end

-- Archive (src/archive): the finished turn, whole, appended to the partition's archive stream
-- for the archivers to copy to PostgreSQL off the turn's path. Reached only from end_turn, which
-- runs once per turn (I4): a resent finish answers from `wr` before it gets here, a resent
-- cancel or reclaim finds the turn ended. Fields: b base, t turn id, o outcome, u user text,
-- a assistant text ('ah' = '1' when it went into history), opts (the turn's opts: its owner),
-- c created ms, f finished ms, pt/ct tokens, ec/em error, up/mo/tv audit, su/st the session
-- summary (when of the current epoch).
local function archive_turn(S, tid, outcome, ev, text, pushed, epoch)
  local t = redis.call('HMGET', S.turn, 'text', 'opts', 'created', 'upstream', 'model', 'template')
  local s = redis.call('HMGET', S.summary, 'epoch', 'upto', 'text')
  local su, st = '', ''
  if s[1] and s[1] == epoch then
    su, st = s[2] or '', s[3] or ''
  end
  redis.call('XADD', S.archive, 'MAXLEN', '~', C.archive_max, '*', 'b', string.sub(S.meta, 1, -6), 't', tid,
    'o', outcome, 'u', t[1] or '', 'a', text, 'ah', pushed and '1' or '0', 'opts', t[2] or '',
    'c', t[3] or C.now, 'f', C.now, 'pt', ev.prompt_tokens or 0, 'ct', ev.completion_tokens or 0,
    'ec', ev.code or '', 'em', ev.message or '', 'up', t[4] or '', 'mo', t[5] or '', 'tv', t[6] or '',
    'su', su, 'st', st)
end

-- Ends a turn: final event, assistant message into history, active cleared, and (archiving on)
-- the turn appended to the archive stream. The caller acks. `active`: as clear_active. `wr`: the
-- head of a stored write reply to complete with the final event's seq (finish: '["ok",'), or
-- nil; `...`: more turn fields. Both go into the one HSET of the turn.
local function end_turn(S, tid, outcome, ev, epoch, active, wr, ...)
  local archive = archiving(S)
  local text = ''
  if active == nil then
    active = redis.call('HGET', S.meta, 'active')
  end
  if active == tid then
    text = redis.call('GET', S.partial) or ''
  end
  local pushed = text ~= '' or outcome == 'done'
  if pushed then
    push_hist(S, { v = 1, role = 'assistant', turn_id = tid, text = text, status = outcome })
  end
  if archive then
    archive_turn(S, tid, outcome, ev, text, pushed, epoch)
  end
  local seq = append_event(S, ev, epoch)
  if wr then
    redis.call('HSET', S.turn, 'status', outcome, 'finished', C.now, 'fseq', seq, 'wr', wr .. seq .. ']', ...)
  else
    redis.call('HSET', S.turn, 'status', outcome, 'finished', C.now, 'fseq', seq, ...)
  end
  clear_active(S, tid, active)
  return seq
end

-- Counts a lasting connection (id `conn`, '' or nil for none) as watching the session.
local function attach(S, conn)
  if conn and conn ~= '' then
    redis.call('HSET', S.conns, conn, C.now)
    redis.call('EXPIRE', S.conns, C.ttl)
    redis.call('HDEL', S.meta, 'detached')
  end
end

-- Takes a quota slot for a[o + 1] (then max_inflight, max_per_minute, stale_ms, max_listed) in
-- the tenant's in-flight set and minute counter: cf3_quota_acquire (see there), and the `enq` op
-- when it declared the quota keys.
local function quota_take(inflight, tpm, a, o, now)
  local member, max_inflight, max_pm = a[o + 1], tonumber(a[o + 2]), tonumber(a[o + 3])
  local stale_ms, max_listed = tonumber(a[o + 4]), tonumber(a[o + 5])
  local minute = math.floor(now / 60000)
  if string.sub(tpm, -#tostring(minute) - 1) ~= ':' .. minute then
    return { 'minute', minute }
  end
  if redis.call('ZSCORE', inflight, member) then
    return { 'ok' }
  end
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now - stale_ms)
  if max_pm > 0 and tonumber(redis.call('GET', tpm) or '0') >= max_pm then
    return { 'per_minute', (minute + 1) * 60000 - now }
  end
  if max_inflight > 0 and redis.call('ZCARD', inflight) >= max_inflight then
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

--[[ op enq: the gateway turns a client `send` into a turn.       keys: session, turn, stream
op: tid, client_msg_id, text, epoch_candidate, opts (bytes), traceparent, wake (1: publish a
    wake-up for Cluster workers), user (the sender; '*' skips the owner check),
    present (1: refuse a session Redis does not have; archiving on, see `missing`),
    attachments ('' or a MessagePack array of maps {url, content_type, size[, name]}, checked by
      the gateway; stored on the user_message event and the history message when not empty),
    connection id ('' = none: else a lasting connection that follows the turn from here, counted
      as `open` counts it, until `detach`; an ingress request saves its own open this way)
    [, quota: member, max_inflight, max_per_minute, stale_ms, max_listed (5 fields, as
       cf3_quota_acquire's ARGV; its keys, the inflight ZSET and the minute's counter, follow the
       stream in the op's keys)]
Returns {status, turn_id, seq, epoch}; status is
  new        the message is stored and the turn queued; seq is the user_message event's seq
  missing    (present = 1) the session has no meta: nothing written; the gateway restores it from
             the archive first, if the archive has it, then sends again without `present`
  dup        client_msg_id was seen: the original turn id and seq, nothing written (a retried send)
  busy       another turn of the session is active; turn_id names it, nothing written
  forbidden  the session is bound to another user; nothing written
  quota      the quota refused or needs another call; nothing written. A 5th element is
             cf3_quota_acquire's reply (per_minute, inflight or minute)
Atomic because dedupe, the busy check, seq assignment and the stream entry must not interleave
with another gateway's send for the same session.
]]
local function op_enq(S, a, o, n, keys, k)
  local tid, cmid, text = a[o + 1], a[o + 2], a[o + 3]
  if a[o + 9] == '1' and redis.call('EXISTS', S.meta) == 0 then
    return { 'missing', '', 0, '' }
  end
  local m = redis.call('HMGET', S.meta, 'epoch', 'owner', 'active', 'tt')
  local epoch, owner, active, tt = m[1], m[2] or '', m[3], m[4]
  -- A new session (no meta) has no owner to refuse, no dedupe entry (its leftovers are dropped
  -- when it is created) and no active turn.
  if epoch then
    if refused(owner, a[o + 8]) then
      return { 'forbidden', '', 0, '' }
    end
    -- dedupe values are "<turn id> <seq of its user_message>", so a retried send is answered
    -- without reading the other turn's hash (a key this op does not declare).
    local existing = redis.call('HGET', S.dedupe, cmid)
    if existing then
      attach(S, a[o + 11])
      local otid, oseq = string.match(existing, '^(%S+) (%d+)$')
      return { 'dup', otid or existing, tonumber(oseq or 0), epoch }
    end
    if active then
      return { 'busy', active, 0, epoch }
    end
  end
  -- The tenant's quota slot, taken in this same call when the gateway declared the quota keys
  -- after the stream (a single Redis; in a Cluster they live in another slot). A refusal writes
  -- nothing: a retried send got its `dup` above, and a busy session takes no slot.
  if n >= 16 then
    local q = quota_take(keys[k + 12], keys[k + 13], a, o + 11, C.now)
    if q[1] ~= 'ok' then
      return { 'quota', '', 0, '', q }
    end
  end
  if not epoch then
    epoch = create_meta(S, a[o + 4], a[o + 8])
  end
  attach(S, a[o + 11])
  local ev = { v = 1, type = 'user_message', turn_id = tid, client_msg_id = cmid, text = text }
  local hm = { v = 1, role = 'user', turn_id = tid, text = text }
  if a[o + 10] ~= '' then
    local att = cmsgpack.unpack(a[o + 10])
    if type(att) == 'table' and #att > 0 then
      ev.attachments, hm.attachments = att, att
    end
  end
  local seq = append_event(S, ev, epoch)
  push_hist(S, hm)
  local tp = a[o + 6] or ''
  local eid = redis.call('XADD', S.stream, '*', 'b', string.sub(S.meta, 1, -6), 't', tid, 'tp', tp)
  -- Wake-up for workers in Redis Cluster, which cannot block on all partitions in one read; the
  -- channel shares the stream's hash tag, so this stays in the slot.
  if a[o + 7] == '1' then
    redis.call('SPUBLISH', S.stream .. ':wake', '1')
  end
  -- The user's text stays with the turn so an operator can replay a dead-lettered turn.
  redis.call('HSET', S.turn, 'status', 'queued', 'cmid', cmid, 'attempt', 0, 'eid', eid, 'epoch', epoch,
    'useq', seq, 'created', C.now, 'created_us', C.now_us, 'opts', a[o + 5], 'text', text, 'tp', tp)
  redis.call('HSET', S.dedupe, cmid, tid .. ' ' .. seq)
  -- The dedupe hash keeps the last dedupe_max sends: a client retries a send within seconds.
  if redis.call('RPUSH', S.dq, cmid) > C.dedupe_max then
    redis.call('HDEL', S.dedupe, redis.call('LPOP', S.dq))
  end
  -- The session's TTL is refreshed when the last refresh by an enq is ttl/4 old: the session's
  -- keys (all written by that enq, so all given the TTL then) have 3/4 of it left. Only the new
  -- turn hash always needs its own. A restore recreates keys without TTL: it clears tt.
  redis.call('EXPIRE', S.turn, C.ttl)
  if C.now - tonumber(tt or 0) >= C.ttl * 250 then
    touch(S, false)
    redis.call('HSET', S.meta, 'active', tid, 'tt', C.now)
  else
    redis.call('HSET', S.meta, 'active', tid)
  end
  return { 'new', tid, seq, epoch }
end

-- Reads what a running attempt needs before calling the model (the tail of `start`'s reply).
-- `own_hist`: the caller reads the history itself, with a plain LRANGE sent beside this call, so
-- the reply holds none: every message copied into Lua and out again cost ~1 µs of Redis CPU,
-- where a plain LRANGE sends Redis's list as it is. The history cannot change between the two:
-- the session's next turn is refused (`busy`) until this one ends.
local function start_reply(S, st, attempt, epoch, own_hist)
  local hist = own_hist and {} or redis.call('LRANGE', S.hist, -C.hist_max, -1)
  local flags = redis.call('SMEMBERS', S.flags)
  local s = redis.call('HMGET', S.summary, 'epoch', 'upto', 'text')
  local upto, text = '', ''
  if s[1] and s[1] == epoch then
    upto, text = s[2] or '', s[3] or ''
  end
  local records = redis.call('HVALS', S.tools)
  -- A turn enqueued before created_us existed has only its ms stamp.
  local created_us = st[6] or (st[4] .. '000')
  return { 'run', attempt, hist, st[5] or '', created_us, st[8] or C.now_us, epoch, flags, upto, text, records }
end

--[[ op start: a worker begins a delivered turn.                    keys: session, turn, stream
op: tid, entry id, worker id, request id (unique per start call), and optionally '1' when the
    caller reads the history itself (the reply's history is then empty)
Returns
  {'run', attempt, history (list of msgpack), opts, created_us, started_us, epoch, flags,
   summary_upto, summary_text, tool records}                           queued -> running
  {'skip', status}   the turn ended (cancelled while queued, or finished): entry acked and deleted
  {'gone'}           the turn hash is gone or belongs to a lost epoch: entry acked and deleted
  {'held'}           another attempt is running it: leave the entry, reclaim decides
A repeat of the same request id answers `run` with the attempt it started (I5). Atomic so that
exactly one worker moves a turn to running, and the attempt it gets fences every later write.
]]
local function op_start(S, a, o, n)
  local tid, eid, worker, sreq = a[o + 1], a[o + 2], a[o + 3], a[o + 4]
  local own_hist = n >= 5 and a[o + 5] == '1'
  local st = redis.call('HMGET', S.turn, 'status', 'attempt', 'epoch', 'created', 'opts', 'created_us', 'sreq',
    'started_us')
  local status = st[1]
  local epoch = redis.call('HGET', S.meta, 'epoch')
  if not status or epoch ~= st[3] then
    ack_del(S.stream, eid)
    clear_active(S, tid)
    return { 'gone' }
  end
  if status == 'running' and st[7] == sreq then
    return start_reply(S, st, tonumber(st[2]), epoch, own_hist)
  end
  if TERMINAL[status] then
    ack_del(S.stream, eid)
    return { 'skip', status }
  end
  if status ~= 'queued' then
    return { 'held' }
  end
  local attempt = tonumber(st[2]) + 1
  redis.call('HSET', S.turn, 'status', 'running', 'worker', worker, 'attempt', attempt,
    'lease', C.now + C.lease_ms, 'started', C.now, 'started_us', C.now_us, 'sreq', sreq, 'wi', 0,
    'tt', C.now, 'plen', 0, 'wr', '')
  append_event(S, { v = 1, type = 'turn_started', turn_id = tid, attempt = attempt }, epoch)
  st[8] = C.now_us
  return start_reply(S, st, attempt, epoch, own_hist)
end

--[[ Fence and resend check shared by every worker write (emit, tool, hb, audit, finish, release).
op starts with: tid, attempt, write index.
Returns 'dup', reply     this write was applied already: its first reply (I5)
        'fenced'         the caller no longer owns the turn (I1)
        'ok', cancel, epoch, st
With abandon_ms > 0 (the tenant's disconnect policy is `cancel`), a session that no client has
been attached to for abandon_ms gets its running turn's cancel flag set here.
]]
local function fence(S, a, o, abandon_ms)
  local attempt, widx = a[o + 2], tonumber(a[o + 3])
  local st = redis.call('HMGET', S.turn, 'status', 'attempt', 'cancel', 'epoch', 'wi', 'wr', 'lease', 'tt', 'plen')
  if st[2] == attempt and st[5] and widx <= tonumber(st[5]) then
    if widx == tonumber(st[5]) and st[6] and st[6] ~= '' then
      return 'dup', cjson.decode(st[6])
    end
    return 'dup', { 'stale' }
  end
  if st[1] ~= 'running' or st[2] ~= attempt then
    return 'fenced'
  end
  local meta = redis.call('HMGET', S.meta, 'epoch', 'detached', 'active')
  if meta[1] ~= st[4] then
    return 'fenced'
  end
  local cancel = st[3] or '0'
  abandon_ms = tonumber(abandon_ms or 0) or 0
  if cancel ~= '1' and abandon_ms > 0 and meta[2] and C.now - tonumber(meta[2]) >= abandon_ms then
    redis.call('HSET', S.turn, 'cancel', 1, 'cancel_at', C.now, 'cancel_reason', 'disconnected')
    cancel = '1'
  end
  -- The session's active turn rides along (false: none), for finish's end_turn.
  st[10] = meta[3] or false
  return 'ok', cancel, meta[1], st
end

-- Records a worker write as applied: its index and its reply `wr` (the reply as JSON, written by
-- the caller as a string: cheaper than cjson, and readable by tools), and `...`, more turn fields.
-- Extends the lease once half of it is used, and refreshes the session's TTL every ttl/4 of a
-- long turn (when the op declared the whole session; a delta in the delta layout leaves it to the
-- next op that does, which the worker sends every ttl/8 by its own clock). The common case is one
-- HSET with no table built.
local function applied(S, a, o, st, wr, ...)
  local lease = tonumber(st[7] or 0) - C.now < C.lease_ms / 2
  local ttl = S.hist and C.now - tonumber(st[8] or 0) >= C.ttl * 250
  if not (lease or ttl) then
    redis.call('HSET', S.turn, 'wi', a[o + 3], 'wr', wr, ...)
    return
  end
  local fields = { 'wi', a[o + 3], 'wr', wr, ... }
  if lease then
    fields[#fields + 1] = 'lease'
    fields[#fields + 1] = C.now + C.lease_ms
  end
  if ttl then
    touch(S, true)
    fields[#fields + 1] = 'tt'
    fields[#fields + 1] = C.now
  end
  redis.call('HSET', S.turn, unpack(fields))
end

-- True when the op's fields hold an audit (upstream, model, template) at a[i..i+2]: present
-- (within the op's last field, `last`) and its upstream not empty.
local function has_audit(a, i, last)
  return i + 2 <= last and a[i] ~= ''
end

-- The partial text's length when it is not `plen` (what the worker's deltas add up to): Redis
-- lost acknowledged writes. nil when they agree (or the op carries no plen). The turn hash keeps
-- the length (`plen`, written with every APPEND in the same call, so a Redis that lost writes
-- lost both alike), which saves a STRLEN per delta; a turn started before that field existed is
-- measured.
local function behind(S, plen, st)
  local have = tonumber(st[9]) or redis.call('STRLEN', S.partial)
  if have ~= tonumber(plen or have) then
    return have
  end
  return nil
end

--[[ op emit: a worker appends a delta of the running turn.               keys: session, turn
    op emitc is the same write with only the keys it touches: meta, log, partial, turn (see
    delta_keys); the worker sends it, and `emit` every ttl/8 so the session's TTL is refreshed.
op: tid, attempt, write index, text, abandon_ms (0 = keep generating when nobody watches),
    plen (the bytes of partial text the worker's earlier deltas add up to)
    [, upstream, model, template]  who answered this round, recorded with the delta
Returns {seq, cancel}: seq = 0 when fenced (the caller lost the turn and must stop writing);
cancel = 1 when the user asked to stop, or nobody watched for abandon_ms.
Returns {-1, cancel, have} when the partial text is not plen long: Redis lost acknowledged writes
(a failover to a replica that had not received them). Nothing is written; the worker re-sends
its text from byte `have` on, so the answer stored has no hole where the lost deltas were.
]]
local function op_emit(S, a, o, n)
  local verdict, cancel, epoch, st = fence(S, a, o, a[o + 5])
  if verdict == 'dup' then
    return cancel
  elseif verdict == 'fenced' then
    return { 0, 0 }
  end
  local have = behind(S, a[o + 6], st)
  if have then
    return { -1, cancel == '1' and 1 or 0, have }
  end
  local text = a[o + 4]
  local seq = append_event(S, { v = 1, type = 'delta', turn_id = a[o + 1], text = text }, epoch)
  local len = redis.call('APPEND', S.partial, text)
  if len == #text then
    redis.call('EXPIRE', S.partial, C.ttl)
  end
  local c = cancel == '1' and 1 or 0
  local wr = '[' .. seq .. ',' .. c .. ']'
  if has_audit(a, o + 7, o + n) then
    applied(S, a, o, st, wr, 'plen', len, 'upstream', a[o + 7], 'model', a[o + 8], 'template', a[o + 9])
  else
    applied(S, a, o, st, wr, 'plen', len)
  end
  return { seq, c }
end

--[[ op tool: a worker reports a tool call's state to the client (fenced like emit).
                                                                         keys: session, turn
op: tid, attempt, write index, name, state [, record key, record (msgpack ToolRecord)]
  The call's record is stored in the turn's tools hash under the record key, in the same step as
  the event, so an attempt that takes the turn over knows exactly what ran and what the client saw.
Returns {seq, cancel} as emit.
]]
local function op_tool(S, a, o, n)
  local verdict, cancel, epoch, st = fence(S, a, o, 0)
  if verdict == 'dup' then
    return cancel
  elseif verdict == 'fenced' then
    return { 0, 0 }
  end
  local seq = append_event(S, { v = 1, type = 'tool_status', turn_id = a[o + 1], name = a[o + 4], state = a[o + 5] }, epoch)
  if n >= 7 and a[o + 6] ~= '' then
    redis.call('HSET', S.tools, a[o + 6], a[o + 7])
    redis.call('EXPIRE', S.tools, C.ttl)
  end
  local c = cancel == '1' and 1 or 0
  applied(S, a, o, st, '[' .. seq .. ',' .. c .. ']')
  return { seq, c }
end

--[[ op hb: fenced lease extension while the model is silent.             keys: session, turn
op: tid, attempt, write index, abandon_ms (as emit)
Returns {ok, cancel}: ok = 0 when fenced.
]]
local function op_hb(S, a, o, n)
  local verdict, cancel, _, st = fence(S, a, o, a[o + 4])
  if verdict == 'dup' then
    return cancel
  elseif verdict == 'fenced' then
    return { 0, 0 }
  end
  st[7] = 0 -- a heartbeat always extends the lease
  local c = cancel == '1' and 1 or 0
  applied(S, a, o, st, '[1,' .. c .. ']')
  return { 1, c }
end

--[[ op audit: a worker records who answered the turn (fenced like emit).  keys: session, turn
op: tid, attempt, write index, upstream, model, template
Returns {1} when recorded, {0} when fenced.
]]
local function op_audit(S, a, o, n)
  local verdict, reply, _, st = fence(S, a, o, 0)
  if verdict == 'dup' then
    return reply
  elseif verdict == 'fenced' then
    return { 0 }
  end
  if has_audit(a, o + 4, o + n) then
    applied(S, a, o, st, '[1]', 'upstream', a[o + 4], 'model', a[o + 5], 'template', a[o + 6])
  else
    applied(S, a, o, st, '[1]')
  end
  return { 1 }
end

--[[ op finish: a worker ends its turn.     keys: session, turn, stream, dead letters [, archive]
op: tid, attempt, write index, outcome (done|error|cancelled), entry id, prompt_tokens,
    completion_tokens, error code, error message, dead (1 = dead-letter it), usage source
    (reported|estimated), plen (the answer's length in bytes, as the worker emitted it)
    [, upstream, model, template [, citations [, quota] ] ] (an empty upstream: no audit;
    citations: '' or a JSON array of {document, chunk, title?}, the reference material the
    answer's prompt held; it goes into the `done` event; quota: '' or the index, counted from
    the op's key index, of the tenant's in-flight quota ZSET among the op's keys: on a single
    Redis the turn's slot (member "<session base>|<tid>", see cf3_quota_acquire) is freed here,
    saving the worker a cf3_quota_release call)
Returns {'ok', seq} or {'fenced'}, or {'behind', have} when the partial text is not plen long
(see emit): the worker emits what Redis lost, then finishes again.
Atomic so that the final event, the history entry, the active flag and the ack happen exactly once
(I4) and only for the current attempt (I1).
]]
local function op_finish(S, a, o, n, keys, k)
  local verdict, reply, epoch, st = fence(S, a, o, 0)
  if verdict == 'dup' then
    return reply
  elseif verdict == 'fenced' then
    return { 'fenced' }
  end
  local have = behind(S, a[o + 12], st)
  if have then
    return { 'behind', have }
  end
  local tid, outcome = a[o + 1], a[o + 4]
  local ev = { v = 1, type = outcome, turn_id = tid }
  if outcome == 'done' then
    ev.prompt_tokens = tonumber(a[o + 6])
    ev.completion_tokens = tonumber(a[o + 7])
    if n >= 16 and a[o + 16] ~= '' then
      ev.citations = cjson.decode(a[o + 16])
    end
    if a[o + 11] == 'estimated' then
      ev.usage_estimated = true
    end
  elseif outcome == 'error' then
    ev.code = a[o + 8]
    ev.message = a[o + 9]
  end
  -- Written before end_turn, which archives the turn with these fields.
  if has_audit(a, o + 13, o + n) then
    redis.call('HSET', S.turn, 'upstream', a[o + 13], 'model', a[o + 14], 'template', a[o + 15])
  end
  local seq = end_turn(S, tid, outcome, ev, epoch, st[10], '["ok",', 'wi', a[o + 3], 'usage', a[o + 11],
    'prompt_tokens', a[o + 6], 'completion_tokens', a[o + 7])
  if a[o + 10] == '1' then
    dead_letter(S, 'b', string.sub(S.meta, 1, -6), 't', tid, 'reason', a[o + 8], 'detail', a[o + 9],
      'attempts', a[o + 2], 'at', C.now)
  end
  ack_del(S.stream, a[o + 5])
  if n >= 17 and a[o + 17] ~= '' then
    redis.call('ZREM', keys[k + tonumber(a[o + 17])], string.sub(S.meta, 1, -6) .. '|' .. tid)
  end
  return { 'ok', seq }
end

--[[ op release: a draining worker hands its running turn back without waiting for the lease.
                                                                         keys: session, turn
op: tid, attempt, write index
Returns {1} when released, {0} when fenced. The turn becomes queued with its lease expired,
clients get `reset`, and the next sweep hands it to another worker.
]]
local function op_release(S, a, o, n)
  local verdict, reply, epoch = fence(S, a, o, 0)
  if verdict == 'dup' then
    return reply
  elseif verdict == 'fenced' then
    return { 0 }
  end
  redis.call('HSET', S.turn, 'status', 'queued', 'worker', '', 'lease', 0, 'wi', a[o + 3], 'wr', '[1]')
  redis.call('DEL', S.partial)
  append_event(S, { v = 1, type = 'reset', turn_id = a[o + 1], attempt = tonumber(a[o + 2]) }, epoch)
  return { 1 }
end

--[[ op cancel: the user pressed stop.  keys: session, turn [, stream, dead letters, archive]
                                        (the last three only when archiving is on)
op: tid, worker control channel prefix
Returns
  {'cancelled', seq}      the turn was queued: it ends now and will never start
  {'cancelling', worker}  the turn is running: its cancel flag is set and its worker is told on
                          <prefix><worker> (a push that saves waiting for the next emit; the
                          flag stays the truth if the push is lost)
  {'ended', status}       the turn already ended (also what a resent cancel of a queued turn gets)
  {'unknown'}             no such turn in this session
]]
local function op_cancel(S, a, o, n)
  local tid = a[o + 1]
  local st = redis.call('HMGET', S.turn, 'status', 'worker')
  if not st[1] then
    return { 'unknown' }
  end
  if st[1] == 'queued' then
    local epoch = redis.call('HGET', S.meta, 'epoch')
    return { 'cancelled', end_turn(S, tid, 'cancelled', { v = 1, type = 'cancelled', turn_id = tid }, epoch) }
  end
  if st[1] == 'running' then
    redis.call('HSET', S.turn, 'cancel', 1, 'cancel_at', C.now)
    redis.call('PUBLISH', a[o + 2] .. st[2], string.sub(S.meta, 1, -6) .. '\n' .. tid)
    return { 'cancelling', st[2] }
  end
  return { 'ended', st[1] }
end

--[[ op reclaim: takes over one turn found by cf3_reclaim_scan.
                                      keys: session, turn, stream, dead letters [, archive]
op: tid, entry id, consumer (the sweeping worker), max_attempts
Decides on the turn's lease (server time), never on pending idle time alone, so a healthy long
turn is never taken over. A reclaimed running turn goes back to queued (its old attempt is fenced
from here on) and clients get `reset`. Past max_attempts the turn is dead-lettered and clients get
`error`. A turn of a lost epoch, or gone, is acked away. Returns
  {'claimed'}  the entry is now the caller's, to run like a new delivery
  {'ended'}    the turn ended here (cancelled, dead-lettered, or gone)
  {'live'}     its lease is current: left alone
A resend finds the entry claimed and the turn queued again: it claims it again (harmless).
]]
local function op_reclaim(S, a, o, n)
  local tid, eid = a[o + 1], a[o + 2]
  local st = redis.call('HMGET', S.turn, 'status', 'attempt', 'lease', 'cancel', 'epoch')
  local status = st[1]
  local epoch = redis.call('HGET', S.meta, 'epoch')
  if not status or TERMINAL[status] or st[5] ~= epoch then
    ack_del(S.stream, eid)
    if status and not TERMINAL[status] then
      clear_active(S, tid)
    end
    return { 'ended' }
  end
  if status == 'running' and tonumber(st[3] or 0) >= C.now then
    return { 'live' }
  end
  if status == 'running' and st[4] == '1' then
    end_turn(S, tid, 'cancelled', { v = 1, type = 'cancelled', turn_id = tid }, epoch)
    ack_del(S.stream, eid)
    return { 'ended' }
  end
  if status == 'running' and tonumber(st[2]) >= tonumber(a[o + 4]) then
    end_turn(S, tid, 'error', { v = 1, type = 'error', turn_id = tid, code = 'worker_lost',
      message = 'the turn failed on ' .. st[2] .. ' workers' }, epoch)
    dead_letter(S, 'b', string.sub(S.meta, 1, -6), 't', tid, 'reason', 'max_attempts', 'attempts', st[2],
      'at', C.now)
    ack_del(S.stream, eid)
    touch(S, true)
    return { 'ended' }
  end
  if status == 'running' then
    redis.call('HSET', S.turn, 'status', 'queued', 'worker', '', 'lease', 0)
    redis.call('DEL', S.partial)
    append_event(S, { v = 1, type = 'reset', turn_id = tid, attempt = tonumber(st[2]) }, epoch)
  end
  redis.call('XCLAIM', S.stream, C.group, a[o + 3], 0, eid, 'JUSTID')
  return { 'claimed' }
end

--[[ op open: a client says hello. Sent after the gateway subscribed to the session channel, so
nothing published from here on is missed.                                      keys: session
op: epoch_candidate, client epoch ('' if none), client last_seq (-1 if none), replay_max, hist_n,
    connection id ('' = not a lasting connection; else it now watches the session, until
    `detach` with the same id), user (the opener; '*' skips the owner check)
Returns
  {'replay', epoch, seq, {{seq, event}, ...}}   the events after last_seq, all still in the log
  {'snapshot', epoch, seq, history, active turn id or '', partial text, reason}
      reason: 'new' (no last_seq), 'epoch' (history was lost or is another session's),
      'trimmed' (last_seq older than the log keeps), 'future' (last_seq ahead of the session:
      Redis lost writes the client saw)
  {'forbidden'}  the session is bound to another user
Atomic so that the replay or snapshot and the seq it ends at are one consistent cut.
]]
local function op_open(S, a, o, n)
  local epoch, owner = ensure_meta(S, a[o + 1], a[o + 7])
  if refused(owner, a[o + 7]) then
    return { 'forbidden' }
  end
  attach(S, a[o + 6])
  touch(S, false)
  local seq = tonumber(redis.call('HGET', S.meta, 'seq'))
  local replay_max = tonumber(a[o + 4])
  local reason = 'new'
  local last = tonumber(a[o + 3])
  if last >= 0 then
    if a[o + 2] ~= epoch then
      reason = 'epoch'
    elseif last > seq then
      reason = 'future'
    elseif last == seq then
      return { 'replay', epoch, seq, {} }
    elseif seq - last <= replay_max then
      local entries = redis.call('XRANGE', S.log, (last + 1) .. '-0', '+', 'COUNT', replay_max)
      if #entries > 0 and entries[1][1] == (last + 1) .. '-0' then
        local out = {}
        for i, e in ipairs(entries) do
          out[i] = { tonumber(string.match(e[1], '^(%d+)')), e[2][2] }
        end
        return { 'replay', epoch, seq, out }
      end
      reason = 'trimmed'
    else
      reason = 'trimmed'
    end
  end
  local hist = redis.call('LRANGE', S.hist, -tonumber(a[o + 5]), -1)
  local active = redis.call('HGET', S.meta, 'active') or ''
  local partial = ''
  if active ~= '' then
    partial = redis.call('GET', S.partial) or ''
  end
  return { 'snapshot', epoch, seq, hist, active, partial, reason }
end

--[[ op detach: a lasting connection of the session closed.                     keys: session
op: connection id
Returns {n}: the connections still attached. When none is left, the time is recorded, and the
disconnect policy (see fence) may stop the running turn after its grace period. A gateway that
dies without detaching leaves its connections counted: the policy then errs on keeping the turn.
]]
local function op_detach(S, a, o, n)
  if not redis.call('HGET', S.meta, 'epoch') then
    return { 0 }
  end
  redis.call('HDEL', S.conns, a[o + 1])
  local n = redis.call('HLEN', S.conns)
  if n == 0 and not redis.call('HGET', S.meta, 'detached') then
    redis.call('HSET', S.meta, 'detached', C.now)
  end
  return { n }
end

--[[ op summary: stores a summary of a session's older history, written off the streaming path.
                                                                               keys: session
op: epoch, upto (turn id of the last summarised turn), text, template version
Returns {1} when stored, {0} when the session moved to another epoch or the stored summary already
covers as much (turn ids are time-ordered UUIDv7, so they compare as strings). Atomic so two
summaries racing for one session keep the one that covers more; a resend finds it stored.
]]
local function op_summary(S, a, o, n)
  if redis.call('HGET', S.meta, 'epoch') ~= a[o + 1] then
    return { 0 }
  end
  local cur = redis.call('HMGET', S.summary, 'epoch', 'upto')
  if cur[1] == a[o + 1] and cur[2] and cur[2] >= a[o + 2] then
    return { 0 }
  end
  redis.call('HSET', S.summary, 'epoch', a[o + 1], 'upto', a[o + 2], 'text', a[o + 3], 'template', a[o + 4])
  redis.call('EXPIRE', S.summary, C.ttl)
  return { 1 }
end

--[[ op restore: a session Redis lost (TTL, eviction) comes back from the archive.
                                                                               keys: session
op: epoch (new, unique per restore), owner (the user the session is bound to if its meta is
    missing; '*' = shared), summary upto ('' if none), summary text, summary template,
    history messages (msgpack, oldest first) ...
Returns {1} when restored, {0} when the session already has something (an event, a history
message or an active turn: a live session is never overwritten). Restoring starts the new epoch
(clients resync with a snapshot), puts the archived messages into history and the summary back
against that epoch; the owner and the attached connections stay. Atomic so that a send racing
the restore lands either before it (nothing restored) or after it (on top of the restored
history). A resend finds the session on its epoch and answers {1} again, writing nothing.
]]
local function op_restore(S, a, o, n)
  local epoch = a[o + 1]
  local m = redis.call('HMGET', S.meta, 'epoch', 'seq', 'active')
  if m[1] == epoch then
    return { 1 }
  end
  if tonumber(m[2] or 0) > 0 or m[3] or redis.call('LLEN', S.hist) > 0 then
    return { 0 }
  end
  redis.call('DEL', S.log, S.hist, S.dedupe, S.dq, S.partial, S.summary)
  -- tt 0: the keys deleted here come back without a TTL, so the next enq refreshes it.
  local fields = { 'epoch', epoch, 'seq', 0, 'created', C.now, 'tt', 0 }
  if not m[1] then
    local owner = a[o + 2]
    if owner == '*' then
      owner = ''
    end
    fields[#fields + 1] = 'owner'
    fields[#fields + 1] = owner
  end
  redis.call('HSET', S.meta, unpack(fields))
  for i = o + 6, o + n do
    redis.call('RPUSH', S.hist, a[i])
  end
  redis.call('LTRIM', S.hist, -C.hist_max, -1)
  if a[o + 3] ~= '' then
    redis.call('HSET', S.summary, 'epoch', epoch, 'upto', a[o + 3], 'text', a[o + 4], 'template', a[o + 5])
    redis.call('EXPIRE', S.summary, C.ttl)
  end
  touch(S, false)
  return { 1 }
end

--[[ op erase: erasure of a session's data from Redis (the user asked; the caller deletes the
archive rows).       keys: session, [archive stream (archiving on)], then (turn, tools) per turn
op: archive scan max, archiving (1 = the archive stream is declared), turn id ...
Every turn the session still names (dedupe, active turn, history) must be among the declared
turns: otherwise nothing is written and the reply names the missing ones, for the caller to ask
again with them (so every key deleted is declared). Then it deletes the session's keys, those
turns' keys, and the session's entries not yet archived from the archive stream (the archivers
delete what they archived, so the stream holds only the backlog; at most scan max entries are
looked at). A running turn's next write is then fenced: its hash is gone. Returns
  {'more', {turn id, ...}}                      nothing written; declare these and call again
  {'erased', now_ms, keys deleted, archive entries deleted}
now_ms (server time) lets the archive refuse turns of the session that finished before the
erasure but reach it later. Idempotent: a resend finds nothing left and deletes nothing more.
]]
local function op_erase(S, a, o, n, keys, k)
  local at = k + 9
  local archive
  if a[o + 2] == '1' then
    archive = keys[at]
    at = at + 1
  end
  local declared, doomed = {}, {}
  for i = o + 3, o + n do
    declared[a[i]] = true
    doomed[#doomed + 1] = keys[at]
    doomed[#doomed + 1] = keys[at + 1]
    at = at + 2
  end
  local missing, seen = {}, {}
  local function want(tid)
    if tid and tid ~= '' and not declared[tid] and not seen[tid] then
      seen[tid] = true
      missing[#missing + 1] = tid
    end
  end
  for _, v in ipairs(redis.call('HVALS', S.dedupe)) do
    want(string.match(v, '^(%S+)'))
  end
  want(redis.call('HGET', S.meta, 'active'))
  for _, raw in ipairs(redis.call('LRANGE', S.hist, 0, -1)) do
    local ok, msg = pcall(cmsgpack.unpack, raw)
    if ok and type(msg) == 'table' then
      want(msg.turn_id)
    end
  end
  if #missing > 0 then
    return { 'more', missing }
  end
  for _, key in ipairs({ S.meta, S.log, S.hist, S.dedupe, S.dq, S.conns, S.partial, S.flags, S.summary }) do
    doomed[#doomed + 1] = key
  end
  local deleted = 0
  for i = 1, #doomed, 100 do
    deleted = deleted + redis.call('DEL', unpack(doomed, i, math.min(i + 99, #doomed)))
  end
  local entries = 0
  if archive then
    local base = string.sub(S.meta, 1, -6)
    for _, e in ipairs(redis.call('XRANGE', archive, '-', '+', 'COUNT', tonumber(a[o + 1]))) do
      local f = e[2]
      if f[1] == 'b' and f[2] == base then
        entries = entries + redis.call('XDEL', archive, e[1])
      end
    end
  end
  return { 'erased', C.now, deleted, entries }
end

local OPS = {
  enq = op_enq, start = op_start, emit = op_emit, tool = op_tool, hb = op_hb, audit = op_audit,
  finish = op_finish, release = op_release, cancel = op_cancel, reclaim = op_reclaim, open = op_open,
  detach = op_detach, summary = op_summary, restore = op_restore, erase = op_erase,
  -- emit in the delta layout (see delta_keys)
  emitc = op_emit,
}

-- Ops whose keys are not the session block (plus turn block and extras).
local LAYOUTS = { emitc = delta_keys }

-- ARGV entries before the first op: the settings.
local SETTINGS = 8

--[[ cf3_batch: a group of ops, applied in order.
KEYS: the keys of every op, each op's block starting at its key index
ARGV[1..8]: settings: ttl (s), log_max, hist_max, dedupe_max, dlq_max, lease_ms, group,
            archive_max (MAXLEN ~ of the archive streams; 0 = archiving off)
ARGV[9..]: the ops, each as plain strings: kind, key index, n (its field count), then its n
           fields (a[o + 1] .. a[o + n] in the op's function). Flat strings cost the call less than
           a MessagePack array per op: no unpacking and no table per op.
Returns one reply per op, in order: the op's reply, or {'err', message} when the op raised an
error (its neighbours are unaffected; an op checks before it writes, so an error leaves at most
that op half-done, which its own resend or the sweep repairs).
]]
local function batch(keys, args)
  -- ttl, log_max and dlq_max stay strings: Lua formats a number argument of redis.call with
  -- printf on every call (arithmetic on ttl converts it as it goes).
  C.ttl, C.log_max_s, C.hist_max, C.dedupe_max = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  C.dlq_max, C.lease_ms, C.group, C.archive_max = args[5], tonumber(args[6]), args[7], tonumber(args[8])
  C.now, C.now_us = clock()
  local out = {}
  local i, last = SETTINGS + 1, #args
  while i <= last do
    local kind, k, n = args[i], tonumber(args[i + 1]), tonumber(args[i + 2])
    local f = OPS[kind]
    if not f or not k or not n then
      -- The rest cannot be told apart: answer every op after this one with the same error.
      out[#out + 1] = { 'err', 'bad op ' .. tostring(kind) }
      break
    end
    local ok, reply = pcall(f, (LAYOUTS[kind] or session_keys)(keys, k), args, i + 2, n, keys, k)
    if ok then
      out[#out + 1] = reply
    else
      out[#out + 1] = { 'err', tostring(reply) }
    end
    i = i + 3 + n
  end
  return out
end

--[[ cf3_reclaim_scan: one sweep step of a partition, looking for turns whose worker is gone.
KEYS: turns stream, sweep lock, dead-letter stream
ARGV: group, consumer (the sweeping worker), lock_ms, min_idle_ms, count, cursor ('-' to start
      at the oldest pending entry), consumer_gc_idle_ms (0 = off), dlq_max
Returns {next cursor, {{entry id, base, tid, traceparent}, ...}}: the candidates, pending longer
than min_idle_ms, for the caller to settle with `reclaim` ops (which declare the sessions' keys).
The cursor pages through the pending list across calls, so healthy long turns at its head never
hide expired ones behind them. Entries whose payload is gone are acked and dead-lettered. One
sweeper per partition at a time, by the lock. Then consumers with nothing pending that were idle
for consumer_gc_idle_ms are removed (workers that exited): checked and deleted in this one script,
so no delivery can slip in between. A live worker removed by mistake is recreated by its next read.
]]
local function reclaim_scan(keys, args)
  local stream, lock, dlq = keys[1], keys[2], keys[3]
  local group, consumer = args[1], args[2]
  local holder = redis.call('GET', lock)
  if holder and holder ~= consumer then
    return { '-', {} }
  end
  redis.call('SET', lock, consumer, 'PX', args[3])
  local count = tonumber(args[5])
  local pending = redis.call('XPENDING', stream, group, 'IDLE', args[4], args[6], '+', count)
  local cursor = '-'
  if #pending == count then
    cursor = '(' .. pending[#pending][1]
  end
  local found = {}
  for _, p in ipairs(pending) do
    local eid = p[1]
    local entry = redis.call('XRANGE', stream, eid, eid)
    if #entry == 0 then
      redis.call('XACK', stream, group, eid)
      redis.call('XADD', dlq, 'MAXLEN', '~', args[8], '*', 'eid', eid, 'reason', 'payload_missing')
    else
      local f = entry[1][2]
      local base, tid, tp
      for i = 1, #f, 2 do
        if f[i] == 'b' then base = f[i + 1] elseif f[i] == 't' then tid = f[i + 1] elseif f[i] == 'tp' then tp = f[i + 1] end
      end
      found[#found + 1] = { eid, base or '', tid or '', tp or '' }
    end
  end
  local gc_idle = tonumber(args[7] or 0) or 0
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
  return { cursor, found }
end

--[[ cf3_read_log: events after a seq, for a gateway catching a connection up after a pub/sub gap.
KEYS: meta, log of the session
ARGV: after seq, count, epoch the connection is on [, anchor ('1': also return the event at
      `after` itself, so the caller can check it is the one it holds)]
Returns {status, top seq, {{seq, event}, ...}, anchor event ('' when not asked)}: 'ok'; 'epoch'
when the session's epoch changed (the connection must resync with a snapshot); 'trimmed' when
after+1 (or the anchor) is no longer in the log; 'behind' when the session's top seq is below
`after` (Redis lost writes the connection saw, e.g. a failover to a lagging replica: the
connection must resync with a snapshot).
The anchor catches the other face of lost writes: by the time the connection reads, new writes
may already have reused the lost seqs, so the top is no longer below `after` but the event at
`after` is not the one the connection saw.
]]
local function read_log(keys, args)
  local m = redis.call('HMGET', keys[1], 'epoch', 'seq')
  if m[1] ~= args[3] then
    return { 'epoch', 0, {}, '' }
  end
  local top = tonumber(m[2] or 0)
  local after = tonumber(args[1])
  if top < after then
    return { 'behind', top, {}, '' }
  end
  local anchored = args[4] == '1' and after > 0
  local from = anchored and after or after + 1
  local entries = redis.call('XRANGE', keys[2], from .. '-0', '+', 'COUNT', tonumber(args[2]) + (anchored and 1 or 0))
  local anchor = ''
  if anchored then
    if #entries == 0 or entries[1][1] ~= after .. '-0' then
      return { 'trimmed', top, {}, '' }
    end
    anchor = entries[1][2][2]
    table.remove(entries, 1)
  end
  if #entries > 0 and entries[1][1] ~= (after + 1) .. '-0' then
    return { 'trimmed', top, {}, '' }
  end
  local out = {}
  for i, e in ipairs(entries) do
    out[i] = { tonumber(string.match(e[1], '^(%d+)')), e[2][2] }
  end
  return { 'ok', top, out, anchor }
end

--[[ cf3_lead: take or keep a leader lock (e.g. the one queue-metrics exporter).
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
own slot, so they are called as separate commands next to `enq`, never inside it. The cost is a
small, documented inconsistency (docs/security.md): a gateway that dies between acquire and
enqueue leaves a slot held until the caller's reconciliation or `stale_ms` frees it.

  KEYS[1]  <prefix>:{t:<tenant>}:q:inflight   ZSET  member "<session base>|<turn id>", score =
                                                    admitted (ms)
  KEYS[2]  <prefix>:{t:<tenant>}:q:tpm:<min>  STRING turns admitted in that clock minute (Redis
                                                    time); the caller names the minute it expects,
                                                    and the function checks it against TIME

cf3_quota_acquire  ARGV: member, max_inflight (0 = off), max_per_minute (0 = off), stale_ms,
                         max_listed
  returns {'ok'}
        | {'per_minute', retry_after_ms}          nothing written
        | {'inflight', now_ms, member, admitted_ms, member, admitted_ms, ...}
                                                  the oldest holders (up to max_listed), for the
                                                  caller to check against their turns' status
        | {'minute', minute}                      the caller named another minute: call again
  Idempotent by member: a member that already holds a slot is admitted again and counted once.
  Atomic so that two gateways admitting at once cannot both take the last slot.
]]
local function quota_acquire(keys, args)
  return quota_take(keys[1], keys[2], args, 0, clock())
end

--[[
cf3_quota_release  KEYS[1] inflight ZSET, KEYS[2] the current minute's counter (as acquire)
  ARGV: uncount ('1' also takes each removed member's turn back from this minute's count: the
  send stored nothing new), member, member, ...
  returns the number of members removed. Idempotent: a member already gone is neither removed nor
  uncounted again.
]]
local function quota_release(keys, args)
  local removed = 0
  for i = 2, #args do
    removed = removed + redis.call('ZREM', keys[1], args[i])
  end
  if args[1] == '1' and removed > 0 then
    local left = tonumber(redis.call('GET', keys[2]) or '0')
    if left > 0 then
      redis.call('DECRBY', keys[2], math.min(left, removed))
    end
  end
  return removed
end

redis.register_function('cf3_batch', batch)
redis.register_function('cf3_reclaim_scan', reclaim_scan)
redis.register_function{ function_name = 'cf3_read_log', callback = read_log, flags = { 'no-writes' } }
redis.register_function('cf3_lead', lead)
redis.register_function('cf3_quota_acquire', quota_acquire)
redis.register_function('cf3_quota_release', quota_release)
