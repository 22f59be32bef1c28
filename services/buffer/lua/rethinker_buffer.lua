#!lua name=rethinker_buffer
--[[
Server-side logic of the SSR buffer (Redis Functions, Redis >= 7.0).

Loaded by services/buffer/library.py, which replaces __LIB_VERSION__ by a hash of this file and
reloads the library when the running server holds another version (``rtk_version``).

Three groups of functions, each touching only keys of one hash tag (Cluster-ready):
  {s} trajectory store : rtk_add_group, rtk_sample, rtk_get, rtk_sizes, rtk_stats
  {q} prompt queue     : rtk_q_publish, rtk_q_ack, rtk_q_release, rtk_q_stats
  {w} registry         : rtk_w_heartbeat, rtk_w_unregister, rtk_w_live

Store layout (KEYS 1..19 of every store function, in this order; see protocol.store_keys):
  1 sd:       prefix of the per-sample payload keys `sd:<sid>` (codec bytes of the Sample)
  2 smeta     hash idx -> cmsgpack {sid, gid, adv, ver, base}: what never changes after insert
  3 gd:       prefix of the per-group payload keys `gd:<gid>` (codec bytes of the Group without
              its samples: the task and its images)
  4 gmeta     hash gid -> cmsgpack {seq, idxs, advs, created, category, source, sids}
  5 gorder    list of gids, oldest first (capacity eviction)
  6 counters  hash of monotonic counters and histograms
  7 sidx      hash sid -> idx (every stored sample has a small integer index, recycled)
  8 rec       string of 128-bit records, one per idx, read and written with BITFIELD:
                bits 0..45   A = state + 16 * (bucket + 1024) + 65536 * times_sampled
                bits 64..109 B = pos + 2^24 * m   (pos: 1-based slot in its bucket;
                                                   m = floor(w / 2^bucket * 2^22), the acceptance)
              (both below 2^46, so that Lua numbers pass them to Redis exactly)
              state: 0 free, 1 fresh (f), 2 replay (r), 3 zero-advantage fresh (z),
                     4 trained and retired (t), 5 evicted as stale (x)
  9 free      list of recycled idx
  10 slot:    prefix of the bucket arrays `slot:<pool>:<bucket>`: u32 idx per slot (BITFIELD #pos)
  11..13      `cnt` hashes bucket -> count of the pools f, r, z
  14 fifo     zset idx -> ver * 2^32 + seq of every replay-pool sample (ver: its policy version, seq:
              order of entry): oldest version out first, first in first out within a version
              (capacity and replay_max_age eviction; exact for versions below 2^21)
  15 byver    zset idx -> policy version of every fresh-pool sample, f and z (staleness eviction)
  16 series   list of cmsgpack points (time series for the stats endpoint)
  17 vser     hash version -> cmsgpack per-policy-version counts
  18 vidx     zset version -> version (bounds vser)
  19 meta     hash: layout, learner_version, last_point_t
  20 request  (rtk_sample only) string key caching a batch for idempotent retries

Sampling: a pool is split in power-of-two buckets by weight w = m * 2^e (frexp, m in [0.5,1)):
bucket e holds weights in [2^(e-1), 2^e).  A weighted proposal picks bucket e with probability
count_e * 2^e / sum, then a uniform slot in it, and is accepted with probability w / 2^e (>= 1/2,
kept to 22 bits: priorities act with a relative precision of 2^-21): accepted draws have P(j) proportional to w_j, for an expected O(1) work per
draw (the bucket scan covers the few non-empty buckets, independent of the store size).
Proposals are made in rounds; their slots and records are read with one BITFIELD call each, so a
round costs a handful of Redis calls whatever its size, and every access is one fixed-width read
(no hash-table walk: the cost stays flat as the store grows).  A response that leaves the pool
during a call (reuse cap) keeps its slot until the end of the call and is rejected when proposed,
which keeps the draws exact (rejection from a superset).  Buckets stay dense: removals fill holes
with the bucket's tail entries, in one batch per bucket.

Payload bytes never pass through Lua (copying megabytes into Lua strings costs more than the
whole sampling logic): add_group's payload keys are written by MSETNX in the same MULTI/EXEC as
the FCALL, which only checks, commits or deletes them; sample and get return ids and metadata
and the client fetches the payloads itself.
]]

local VERSION = '__LIB_VERSION__'
local LAYOUT = '3'  -- bump when the store's key layout changes
local MAX_ROUNDS = 64
local CHUNK = 500
local ZERO_TOL = 1e-12
local W_MIN, W_MAX = 1e-300, 1e300
local ADV_BINS, ADV_LO, ADV_HI = 20, -2.5, 2.5
local TWO24, TWO22, TS_MAX = 16777216, 4194304, 1073741823
local TWO32 = 4294967296

local K_SDATA, K_SMETA, K_GDATA, K_GMETA, K_GORDER, K_COUNTERS = 1, 2, 3, 4, 5, 6
local K_SIDX, K_REC, K_FREE, K_SLOT, K_FCNT, K_RCNT, K_ZCNT = 7, 8, 9, 10, 11, 12, 13
local K_FIFO, K_BYVER, K_SERIES, K_VSER, K_VIDX, K_META, K_REQ = 14, 15, 16, 17, 18, 19, 20
local N_FIXED = 19

-- record states
local S_FREE, S_F, S_R, S_Z, S_T, S_X = 0, 1, 2, 3, 4, 5
local STATE_CODE = {[0] = '-', 'f', 'r', 'z', 't', 'x'}
-- record fields (Lua tables): st, e, ts, pos, m
local R_ST, R_E, R_TS, R_POS, R_M = 1, 2, 3, 4, 5
-- static meta fields (cmsgpack): sid, gid, adv, ver, base
local SM_SID, SM_GID, SM_ADV, SM_VER, SM_BASE = 1, 2, 3, 4, 5

-- --------------------------------------------------------------------------- helpers

local function fmt(x)
  return string.format('%.17g', x)
end

local function bad(msg)
  return redis.error_reply('RTK_BADARG ' .. msg)
end

-- nil when the store is empty or written with this layout, else an error reply.
local function layout_error(KEYS, claim)
  local lay = redis.call('HGET', KEYS[K_META], 'layout')
  if lay and lay ~= LAYOUT then
    return bad('the store in ' .. KEYS[K_META] .. ' has layout ' .. lay .. ' and this library reads layout ' ..
               LAYOUT .. ': clear it (POST /v1/admin/clear) or use another redis.namespace')
  end
  if claim and not lay then redis.call('HSET', KEYS[K_META], 'layout', LAYOUT) end
  return nil
end

local function finite(v)
  return v ~= nil and v == v and v ~= math.huge and v ~= -math.huge
end

local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end

local function clampw(w)
  if not finite(w) or w > W_MAX then return W_MAX end
  if w < W_MIN then return W_MIN end
  return w
end

local function pools_of(KEYS)
  return {
    [S_F] = {st = S_F, code = 'f', cnt = KEYS[K_FCNT], slot = KEYS[K_SLOT] .. 'f:'},
    [S_R] = {st = S_R, code = 'r', cnt = KEYS[K_RCNT], slot = KEYS[K_SLOT] .. 'r:'},
    [S_Z] = {st = S_Z, code = 'z', cnt = KEYS[K_ZCNT], slot = KEYS[K_SLOT] .. 'z:'},
  }
end

-- A command over a long list of arguments, `step` at a time (Lua's unpack has a stack limit);
-- table replies are concatenated.
local function call_chunked(cmd, key, list, step)
  step = step or CHUNK
  local out = {}
  for i = 1, #list, step do
    local part = {}
    for j = i, math.min(i + step - 1, #list) do part[#part + 1] = list[j] end
    local r = redis.call(cmd, key, unpack(part))
    if type(r) == 'table' then
      for k = 1, #part do out[#out + 1] = r[k] end
    end
  end
  return out
end

local function hmget(key, fields)
  if #fields == 0 then return {} end
  local out = {}
  for i = 1, #fields, CHUNK do
    local part = {}
    for j = i, math.min(i + CHUNK - 1, #fields) do part[#part + 1] = fields[j] end
    local r = redis.call('HMGET', key, unpack(part))
    for j = 1, #part do out[#out + 1] = r[j] end  -- keeps `false` for missing fields
  end
  return out
end

local function each_chunk(list, step, fn)
  for i = 1, #list, step do
    local part = {}
    for j = i, math.min(i + step - 1, #list) do part[#part + 1] = list[j] end
    fn(part)
  end
end

-- u32 slot arrays: read / write many positions of one bucket array in one BITFIELD call each.
local function slot_get(key, positions)
  local args = {}
  for _, p in ipairs(positions) do
    args[#args + 1] = 'GET'
    args[#args + 1] = 'u32'
    args[#args + 1] = 32 * p
  end
  local out = {}
  each_chunk(args, 3 * CHUNK, function(part)
    local r = redis.call('BITFIELD_RO', key, unpack(part))
    for _, v in ipairs(r) do out[#out + 1] = v end
  end)
  return out
end

local function slot_set(key, positions, values)
  local args = {}
  for i, p in ipairs(positions) do
    args[#args + 1] = 'SET'
    args[#args + 1] = 'u32'
    args[#args + 1] = 32 * p
    args[#args + 1] = values[i]
  end
  each_chunk(args, 4 * CHUNK, function(part) redis.call('BITFIELD', key, unpack(part)) end)
end

-- Counters are summed in the script and written once per field at the end.
local function counter_set()
  local c = {v = {}}
  function c.inc(field, by)
    if by ~= 0 then c.v[field] = (c.v[field] or 0) + (by or 1) end
  end
  function c.flush(key)
    for field, by in pairs(c.v) do
      if by ~= 0 then redis.call('HINCRBY', key, field, by) end
    end
    c.v = {}
  end
  return c
end

-- Per-call cache of the records: loaded with one BITFIELD_RO per batch, dirty ones written with
-- one BITFIELD at the end.
local function record_cache(key)
  local c = {data = {}, dirty = {}, order = {}}
  function c.load(idxs)
    local want, seen = {}, {}
    for _, i in ipairs(idxs) do
      if i and c.data[i] == nil and not seen[i] then
        seen[i] = true
        want[#want + 1] = i
      end
    end
    each_chunk(want, CHUNK, function(part)
      local args = {}
      for _, i in ipairs(part) do
        args[#args + 1] = 'GET'
        args[#args + 1] = 'u46'
        args[#args + 1] = i * 128
        args[#args + 1] = 'GET'
        args[#args + 1] = 'u46'
        args[#args + 1] = i * 128 + 64
      end
      local r = redis.call('BITFIELD_RO', key, unpack(args))
      for k, i in ipairs(part) do
        local a, b = r[2 * k - 1], r[2 * k]
        c.data[i] = {a % 16, math.floor(a / 16) % 4096 - 1024, math.floor(a / 65536), b % TWO24, math.floor(b / TWO24)}
      end
    end)
  end
  function c.get(i)
    if c.data[i] == nil then c.load({i}) end
    return c.data[i]
  end
  -- dirty: 1 = only the position changed (word B), 2 = the whole record
  function c.put(i, rec, pos_only)
    c.data[i] = rec
    local d = c.dirty[i]
    if not d then
      c.order[#c.order + 1] = i
      c.dirty[i] = pos_only and 1 or 2
    elseif not pos_only then
      c.dirty[i] = 2
    end
  end
  function c.flush()
    local args = {}
    for _, i in ipairs(c.order) do
      local r = c.data[i]
      if c.dirty[i] == 2 then
        args[#args + 1] = 'SET'
        args[#args + 1] = 'u46'
        args[#args + 1] = i * 128
        args[#args + 1] = r[R_ST] + 16 * (r[R_E] + 1024) + 65536 * math.min(r[R_TS], TS_MAX)
      end
      args[#args + 1] = 'SET'
      args[#args + 1] = 'u46'
      args[#args + 1] = i * 128 + 64
      args[#args + 1] = r[R_POS] + TWO24 * r[R_M]
    end
    each_chunk(args, 8 * CHUNK, function(part) redis.call('BITFIELD', key, unpack(part)) end)
    c.dirty, c.order = {}, {}
  end
  return c
end

-- Static metadata (sid, gid, adv, ver, base) of many idx at once.
local function smeta_get(KEYS, idxs)
  local out = {}
  local raws = hmget(KEYS[K_SMETA], idxs)
  for k, i in ipairs(idxs) do
    if raws[k] then out[i] = cmsgpack.unpack(raws[k]) end
  end
  return out
end

-- Add items {idx, record, weight} to pool P: one HINCRBY and one BITFIELD per bucket.
local function batch_add(P, R, items)
  local by_bucket, order = {}, {}
  for _, it in ipairs(items) do
    local w = clampw(it[3])
    local mant, e = math.frexp(w)
    if not by_bucket[e] then
      by_bucket[e] = {}
      order[#order + 1] = e
    end
    local b = by_bucket[e]
    b[#b + 1] = {it[1], it[2], math.floor(mant * TWO22)}
  end
  for _, e in ipairs(order) do
    local list = by_bucket[e]
    local c = redis.call('HINCRBY', P.cnt, e, #list)
    local base = c - #list
    local positions, values = {}, {}
    for k, it in ipairs(list) do
      local rec = it[2]
      rec[R_ST], rec[R_E], rec[R_POS], rec[R_M] = P.st, e, base + k, it[3]
      R.put(it[1], rec)
      positions[k], values[k] = base + k, it[1]
    end
    slot_set(P.slot .. e, positions, values)
  end
end

-- Remove distinct idx (all in pool P) from P; each bucket stays dense: its tail entries move into
-- the holes.  A handful of calls per bucket, whatever the number removed.
local function batch_remove(P, R, idxs)
  R.load(idxs)
  local by_bucket, order = {}, {}
  for _, i in ipairs(idxs) do
    local rec = R.get(i)
    local e = rec[R_E]
    if not by_bucket[e] then
      by_bucket[e] = {}
      order[#order + 1] = e
    end
    local b = by_bucket[e]
    b[#b + 1] = rec[R_POS]
    rec[R_ST], rec[R_E], rec[R_POS], rec[R_M] = S_FREE, 0, 0, 0
    R.put(i, rec)
  end
  for _, e in ipairs(order) do
    local positions = by_bucket[e]
    local c = tonumber(redis.call('HGET', P.cnt, e) or '0')
    local c2 = c - #positions
    local gone, holes, tail = {}, {}, {}
    for _, p in ipairs(positions) do gone[p] = true end
    for _, p in ipairs(positions) do
      if p <= c2 then holes[#holes + 1] = p end
    end
    for p = c2 + 1, c do
      if not gone[p] then tail[#tail + 1] = p end
    end
    if #holes > 0 then
      local movers = slot_get(P.slot .. e, tail)
      R.load(movers)
      for k, i in ipairs(movers) do
        local rec = R.get(i)
        rec[R_POS] = holes[k]
        R.put(i, rec, true)
      end
      slot_set(P.slot .. e, holes, movers)
    end
    if c2 <= 0 then redis.call('HDEL', P.cnt, e) else redis.call('HSET', P.cnt, e, c2) end
  end
end

local function pool_size(P)
  local vals = redis.call('HVALS', P.cnt)
  local n = 0
  for _, v in ipairs(vals) do n = n + tonumber(v) end
  return n
end

-- Frozen view of a pool's buckets for one call: es (exponent), cs (count), totals; `present`
-- tracks how many are still drawable while physical removals wait until the end of the call.
local function load_state(P)
  local flat = redis.call('HGETALL', P.cnt)
  local st = {P = P, es = {}, cs = {}, n = 0, wt = 0}
  for i = 1, #flat, 2 do
    local e, c = tonumber(flat[i]), tonumber(flat[i + 1])
    st.es[#st.es + 1] = e
    st.cs[#st.cs + 1] = c
    st.n = st.n + c
    st.wt = st.wt + math.ldexp(c, e)
  end
  st.present = st.n
  return st
end

local function pick_bucket(st, weighted)
  local total = weighted and st.wt or st.n
  local u = math.random() * total
  local acc, last = 0, nil
  for i, c in ipairs(st.cs) do
    if c > 0 then
      last = i
      acc = acc + (weighted and math.ldexp(c, st.es[i]) or c)
      if u < acc then return i end
    end
  end
  return last
end

-- `np` proposals from st (weighted or uniform): returns the proposed idx in order (one BITFIELD
-- call per bucket touched).
local function propose(st, np, weighted)
  local per, props = {}, {}
  for i = 1, np do
    local bi = pick_bucket(st, weighted)
    local e = st.es[bi]
    local list = per[e]
    if not list then
      list = {}
      per[e] = list
    end
    list[#list + 1] = math.random(1, st.cs[bi])
    props[i] = {e, #list}
  end
  local got = {}
  for e, list in pairs(per) do got[e] = slot_get(st.P.slot .. e, list) end
  local out = {}
  for i = 1, np do out[i] = got[props[i][1]][props[i][2]] end
  return out
end

-- Up to `need` weighted draws with replacement from st; `usable(idx, rec)` says whether a
-- proposed response may still be drawn, `accept(idx, rec)` records a draw.  Returns the count.
local function draw_weighted(st, R, need, usable, accept)
  local got, rounds = 0, 0
  while got < need and st.present > 0 and rounds < MAX_ROUNDS do
    rounds = rounds + 1
    local np = need - got + math.ceil((need - got) * 0.4) + 2
    local idxs = propose(st, np, true)
    R.load(idxs)
    for _, i in ipairs(idxs) do
      if got >= need or st.present <= 0 then break end
      local rec = R.get(i)
      if rec[R_ST] == st.P.st and usable(i, rec) and math.random() * TWO22 < rec[R_M] then
        got = got + 1
        accept(i, rec)
      end
    end
  end
  return got
end

-- All idx of a pool (for draws that want at least half of it).
local function pool_all(st)
  local out = {}
  for k, e in ipairs(st.es) do
    local c = st.cs[k]
    if c > 0 then
      local raw = redis.call('GETRANGE', st.P.slot .. e, 4, 4 * c + 3)
      for p = 0, c - 1 do
        local b1, b2, b3, b4 = string.byte(raw, 4 * p + 1, 4 * p + 4)
        out[#out + 1] = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
      end
    end
  end
  return out
end

-- Up to `need` distinct responses drawn uniformly from the union of the pools' states (without
-- replacement).  Returns a list of {idx, state}.
local function take_uniform(states, need)
  local total = 0
  for _, st in ipairs(states) do total = total + st.n end
  local out = {}
  if total == 0 or need <= 0 then return out end
  if need * 2 >= total then
    -- at least half of everything is wanted: read it all (O(need)) and shuffle
    local all = {}
    for _, st in ipairs(states) do
      for _, i in ipairs(pool_all(st)) do all[#all + 1] = {i, st} end
    end
    local take = math.min(need, #all)
    for i = 1, take do
      local j = math.random(i, #all)
      all[i], all[j] = all[j], all[i]
      out[i] = all[i]
    end
    return out
  end
  local taken, rounds = {}, 0
  while #out < need and rounds < MAX_ROUNDS do
    rounds = rounds + 1
    local np = need - #out + math.ceil((need - #out) * 0.5) + 2
    -- split the proposals between the pools in proportion to their sizes
    local counts = {}
    for k = 1, #states do counts[k] = 0 end
    for _ = 1, np do
      local u = math.random() * total
      local acc, pick = 0, #states
      for k, s in ipairs(states) do
        acc = acc + s.n
        if u < acc then pick = k break end
      end
      counts[pick] = counts[pick] + 1
    end
    local props = {}
    for k, st in ipairs(states) do
      if counts[k] > 0 and st.n > 0 then
        for _, i in ipairs(propose(st, counts[k], false)) do props[#props + 1] = {i, st} end
      end
    end
    for j = #props, 2, -1 do  -- interleave the pools' proposals
      local k = math.random(1, j)
      props[j], props[k] = props[k], props[j]
    end
    for _, p in ipairs(props) do
      if #out >= need then break end
      if not taken[p[1]] then
        taken[p[1]] = true
        out[#out + 1] = p
      end
    end
  end
  return out
end

local function adv_bin(a)
  local i = math.floor((a - ADV_LO) / (ADV_HI - ADV_LO) * ADV_BINS)
  if i < 0 then i = 0 end
  if i >= ADV_BINS then i = ADV_BINS - 1 end
  return i
end

local POINT_FIELDS = {'groups', 'samples', 'eff_samples', 'zero_samples', 'eff_groups', 'allc_groups',
  'allw_groups', 'draws', 'draws_fresh', 'draws_replay', 'stale_evicted', 'cap_evicted_samples'}

-- Append a time-series point when the last one is older than `interval` seconds.
local function maybe_point(KEYS, interval, window, t)
  local last = tonumber(redis.call('HGET', KEYS[K_META], 'last_point_t') or '0')
  if t - last < interval then return end
  redis.call('HSET', KEYS[K_META], 'last_point_t', fmt(t))
  local vals = redis.call('HMGET', KEYS[K_COUNTERS], unpack(POINT_FIELDS))
  local pt = {t}
  for i = 1, #POINT_FIELDS do pt[#pt + 1] = tonumber(vals[i] or '0') end
  local P = pools_of(KEYS)
  pt[#pt + 1] = pool_size(P[S_F])
  pt[#pt + 1] = pool_size(P[S_R])
  pt[#pt + 1] = pool_size(P[S_Z])
  pt[#pt + 1] = tonumber(redis.call('HGET', KEYS[K_META], 'learner_version') or '-1')
  redis.call('RPUSH', KEYS[K_SERIES], cmsgpack.pack(pt))
  redis.call('LTRIM', KEYS[K_SERIES], -window, -1)
end

-- Take idx out of whatever pool holds them, the version index and the replay FIFO; they get
-- state `to`.  Returns the number taken per pool state.
local function unpool_all(KEYS, P, R, idxs, to)
  R.load(idxs)
  local per = {[S_F] = {}, [S_R] = {}, [S_Z] = {}}
  local ver, fifo = {}, {}
  for _, i in ipairs(idxs) do
    local rec = R.get(i)
    local list = per[rec[R_ST]]
    if list then
      list[#list + 1] = i
      if rec[R_ST] == S_R then fifo[#fifo + 1] = i else ver[#ver + 1] = i end
    end
  end
  for s, list in pairs(per) do
    if #list > 0 then batch_remove(P[s], R, list) end
  end
  for _, list in pairs(per) do
    for _, i in ipairs(list) do
      local rec = R.get(i)
      rec[R_ST] = to
      R.put(i, rec)
    end
  end
  if #ver > 0 then call_chunked('ZREM', KEYS[K_BYVER], ver) end
  if #fifo > 0 then call_chunked('ZREM', KEYS[K_FIFO], fifo) end
  return {f = #per[S_F], r = #per[S_R], z = #per[S_Z]}
end

-- Evict whole groups (oldest first) while more than `capacity` responses are stored.
local function evict_capacity(KEYS, P, R, C, capacity, keep_gid)
  local stored = tonumber(redis.call('HGET', KEYS[K_COUNTERS], 'stored') or '0') + (C.v['stored'] or 0)
  while stored > capacity do
    local old = redis.call('LINDEX', KEYS[K_GORDER], 0)
    if (not old) or old == keep_gid then break end
    redis.call('LPOP', KEYS[K_GORDER])
    local raw = redis.call('HGET', KEYS[K_GMETA], old)
    if raw then
      local gm = cmsgpack.unpack(raw)
      local idxs, sids = gm[2], gm[7]
      local taken = unpool_all(KEYS, P, R, idxs, S_FREE)
      for _, i in ipairs(idxs) do
        local rec = R.get(i)
        rec[R_ST], rec[R_E], rec[R_TS], rec[R_POS], rec[R_M] = S_FREE, 0, 0, 0, 0
        R.put(i, rec)
      end
      call_chunked('HDEL', KEYS[K_SMETA], idxs)
      call_chunked('HDEL', KEYS[K_SIDX], sids)
      call_chunked('RPUSH', KEYS[K_FREE], idxs)
      local dkeys = {KEYS[K_GDATA] .. old}
      for _, sid in ipairs(sids) do dkeys[#dkeys + 1] = KEYS[K_SDATA] .. sid end
      each_chunk(dkeys, CHUNK, function(part) redis.call('UNLINK', unpack(part)) end)
      redis.call('HDEL', KEYS[K_GMETA], old)
      C.inc('cap_evicted_fresh', taken.f)
      C.inc('cap_evicted_samples', #idxs)
      C.inc('cap_evicted_groups', 1)
      C.inc('stored', -#idxs)
      stored = stored - #idxs
    end
  end
end

-- n indices for new samples: recycled ones first.
local function alloc_idx(KEYS, n)
  local out = {}
  local got = redis.call('LPOP', KEYS[K_FREE], n)
  if got then
    for _, v in ipairs(got) do out[#out + 1] = tonumber(v) end
  end
  local more = n - #out
  if more > 0 then
    local last = redis.call('HINCRBY', KEYS[K_COUNTERS], 'next_idx', more)
    for k = last - more + 1, last do out[#out + 1] = k end
  end
  return out
end

-- --------------------------------------------------------------------------- store: add_group

-- Delete the payload keys of a rejected call that do not belong to a stored group / sample.
local function drop_unregistered(KEYS)
  local gkey = KEYS[N_FIXED + 1]
  if gkey and gkey:sub(1, #KEYS[K_GDATA]) == KEYS[K_GDATA] then
    if redis.call('HEXISTS', KEYS[K_GMETA], gkey:sub(#KEYS[K_GDATA] + 1)) == 0 then redis.call('DEL', gkey) end
  end
  local keys, sids = {}, {}
  for i = N_FIXED + 2, #KEYS do
    if KEYS[i]:sub(1, #KEYS[K_SDATA]) == KEYS[K_SDATA] then
      keys[#keys + 1] = KEYS[i]
      sids[#sids + 1] = KEYS[i]:sub(#KEYS[K_SDATA] + 1)
    end
  end
  local reg = hmget(KEYS[K_SIDX], sids)
  for i, k in ipairs(keys) do
    if not reg[i] then redis.call('DEL', k) end
  end
end

--[[ KEYS: the 19 store keys, then gd:<gid>, then sd:<sid> of each sample (written by MSETNX in the
           same transaction just before this call).
ARGV: gid, n, std_normalize(0|1), adv_eps, alpha, capacity, series_interval, stats_window,
      category, source, group_version, then n times: sid, reward, version, correct(0|1)
Returns {stored(0|1), n_effective, adv_1, ..., adv_n} (advantages as strings). ]]
local function add_group(KEYS, ARGV)
  local function reject(msg)
    drop_unregistered(KEYS)
    return bad(msg)
  end
  local gid = ARGV[1]
  local n = tonumber(ARGV[2])
  if gid == nil or gid == '' then return reject('group id is empty') end
  if n == nil or n < 1 or n ~= math.floor(n) then return reject('group ' .. gid .. ': n must be a positive integer, got ' .. tostring(ARGV[2])) end
  if #ARGV ~= 11 + 4 * n then return reject('group ' .. gid .. ': expected ' .. (11 + 4 * n) .. ' arguments, got ' .. #ARGV) end
  if #KEYS ~= N_FIXED + 1 + n then return reject('group ' .. gid .. ': expected ' .. (N_FIXED + 1 + n) .. ' keys, got ' .. #KEYS) end
  local std_norm = ARGV[3] == '1'
  local adv_eps, alpha = tonumber(ARGV[4]), tonumber(ARGV[5])
  local capacity, interval, window = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  local category, source, gver = ARGV[9], ARGV[10], tonumber(ARGV[11])
  if not (finite(adv_eps) and finite(alpha) and alpha > 0 and capacity and capacity >= 1 and gver) then
    return reject('group ' .. gid .. ': bad numeric settings')
  end
  if KEYS[N_FIXED + 1] ~= KEYS[K_GDATA] .. gid then return reject('group ' .. gid .. ': group payload key does not match the id') end
  local lay_err = layout_error(KEYS, false)
  if lay_err then
    drop_unregistered(KEYS)
    return lay_err
  end

  -- idempotent by group id
  local existing = redis.call('HGET', KEYS[K_GMETA], gid)
  if existing then
    drop_unregistered(KEYS)  -- a retry with regenerated sample ids leaves nothing behind
    local gm = cmsgpack.unpack(existing)
    local out = {0, 0}
    for _, a in ipairs(gm[3]) do
      out[#out + 1] = fmt(a)
      if a ~= 0 then out[2] = out[2] + 1 end
    end
    redis.call('HINCRBY', KEYS[K_COUNTERS], 'dup_groups', 1)
    return out
  end

  -- validate everything before the first write
  local sids, rewards, vers, corrects, seen = {}, {}, {}, {}, {}
  for i = 1, n do
    local b = 11 + 4 * (i - 1)
    local sid = ARGV[b + 1]
    local r, v = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    if sid == '' then return reject('group ' .. gid .. ': sample ' .. i .. ' has an empty id') end
    if seen[sid] then return reject('group ' .. gid .. ': sample id ' .. sid .. ' appears twice') end
    seen[sid] = true
    if KEYS[N_FIXED + 1 + i] ~= KEYS[K_SDATA] .. sid then return reject('group ' .. gid .. ': payload key of sample ' .. sid .. ' does not match its id') end
    if not finite(r) then return reject('group ' .. gid .. ': sample ' .. sid .. ' reward is not a finite number: ' .. tostring(ARGV[b + 2])) end
    if v == nil or v ~= math.floor(v) or v < 0 then return reject('group ' .. gid .. ': sample ' .. sid .. ' policy version is not an integer >= 0') end
    sids[i], rewards[i], vers[i], corrects[i] = sid, r, v, ARGV[b + 4] == '1'
  end
  local clash = hmget(KEYS[K_SIDX], sids)
  for i = 1, n do
    if clash[i] then
      return reject('group ' .. gid .. ': sample id ' .. sids[i] .. ' is already stored (in another group)')
    end
  end
  local present = 0
  each_chunk({unpack(KEYS, N_FIXED + 1)}, CHUNK, function(part) present = present + redis.call('EXISTS', unpack(part)) end)
  if present ~= n + 1 then
    return reject('group ' .. gid .. ': ' .. (n + 1 - present) .. ' payload key(s) missing (write them with MSETNX in the same transaction)')
  end

  -- advantages: A = r - mean (optionally / (std + eps), unbiased std)
  local sum = 0
  for i = 1, n do sum = sum + rewards[i] end
  local mean = sum / n
  local var = 0
  for i = 1, n do var = var + (rewards[i] - mean) ^ 2 end
  local std = n > 1 and math.sqrt(var / (n - 1)) or 0
  local advs, n_eff, n_correct = {}, 0, 0
  for i = 1, n do
    local d = rewards[i] - mean
    if math.abs(d) <= ZERO_TOL * math.max(1, math.abs(mean)) then d = 0 end
    if d ~= 0 and std_norm then d = d / (std + adv_eps) end
    advs[i] = d
    if d ~= 0 then n_eff = n_eff + 1 end
    if corrects[i] then n_correct = n_correct + 1 end
  end

  -- writes
  layout_error(KEYS, true)
  local C = counter_set()
  local t = now_s()
  local P = pools_of(KEYS)
  local R = record_cache(KEYS[K_REC])
  local idxs = alloc_idx(KEYS, n)
  local seq = redis.call('HINCRBY', KEYS[K_COUNTERS], 'group_seq', 1)
  redis.call('HSET', KEYS[K_GMETA], gid, cmsgpack.pack({seq, idxs, advs, t, category, source, sids}))
  redis.call('RPUSH', KEYS[K_GORDER], gid)
  local sm, sx, zargs, eff_items, zero_items = {}, {}, {}, {}, {}
  for i = 1, n do
    local idx, a = idxs[i], advs[i]
    local base = (a ~= 0) and clampw(math.abs(a) ^ alpha) or 0
    sm[#sm + 1] = idx
    sm[#sm + 1] = cmsgpack.pack({sids[i], gid, a, vers[i], base})
    sx[#sx + 1] = sids[i]
    sx[#sx + 1] = idx
    local rec = {S_FREE, 0, 0, 0, 0}
    if a ~= 0 then
      eff_items[#eff_items + 1] = {idx, rec, base}
      C.inc('ah:' .. adv_bin(a), 1)
    else
      zero_items[#zero_items + 1] = {idx, rec, 1}
    end
    zargs[#zargs + 1] = vers[i]
    zargs[#zargs + 1] = idx
  end
  call_chunked('HSET', KEYS[K_SMETA], sm, 2 * CHUNK)
  call_chunked('HSET', KEYS[K_SIDX], sx, 2 * CHUNK)
  batch_add(P[S_F], R, eff_items)
  batch_add(P[S_Z], R, zero_items)
  call_chunked('ZADD', KEYS[K_BYVER], zargs, 2 * CHUNK)

  -- counters and histograms
  local allc = (n_correct == n) and 1 or 0
  local allw = (n_correct == 0) and 1 or 0
  local effg = (n_eff > 0) and 1 or 0
  C.inc('groups', 1)
  C.inc('samples', n)
  C.inc('stored', n)
  C.inc('eff_samples', n_eff)
  C.inc('zero_samples', n - n_eff)
  C.inc('eff_groups', effg)
  C.inc('allc_groups', allc)
  C.inc('allw_groups', allw)
  C.inc('ah:zero', n - n_eff)
  C.inc('cat:' .. category, 1)
  C.inc('cate:' .. category, effg)
  C.inc('src:' .. source, 1)
  C.inc('srce:' .. source, effg)

  -- per policy version (the "vanishing advantages" curve over training steps)
  local vraw = redis.call('HGET', KEYS[K_VSER], gver)
  local vs = vraw and cmsgpack.unpack(vraw) or {0, 0, 0, 0, 0, 0}
  vs[1], vs[2], vs[3] = vs[1] + 1, vs[2] + effg, vs[3] + n
  vs[4], vs[5], vs[6] = vs[4] + n_eff, vs[5] + allc, vs[6] + allw
  redis.call('HSET', KEYS[K_VSER], gver, cmsgpack.pack(vs))
  if not vraw then
    redis.call('ZADD', KEYS[K_VIDX], gver, gver)
    if redis.call('ZCARD', KEYS[K_VIDX]) > window then
      local old = redis.call('ZPOPMIN', KEYS[K_VIDX])
      redis.call('HDEL', KEYS[K_VSER], old[1])
    end
  end

  -- capacity: evict oldest groups (never the one just added)
  evict_capacity(KEYS, P, R, C, capacity, gid)
  R.flush()
  C.flush(KEYS[K_COUNTERS])
  maybe_point(KEYS, interval, window, t)

  local out = {1, n_eff}
  for i = 1, n do out[#out + 1] = fmt(advs[i]) end
  return out
end

-- --------------------------------------------------------------------------- store: sample

-- Reply of a batch: {header, cmsgpack({draws, items})} with draws = {idx, pool, ts, ...} and
-- items = {idx, sid, adv, ver, gid, ...} for the distinct drawn responses still stored (one packed
-- string instead of ~1000 reply elements).  `rec` is {header, draws}; the client fetches payloads.
local function distinct_drawn(draws)
  local idxs, seen = {}, {}
  for i = 1, #draws, 3 do
    local idx = draws[i]
    if not seen[idx] then
      seen[idx] = true
      idxs[#idxs + 1] = idx
    end
  end
  return idxs
end

local function batch_reply(KEYS, rec, sm)
  local header, draws, owners = rec[1], rec[2], rec[3] or {}
  local idxs = distinct_drawn(draws)
  sm = sm or smeta_get(KEYS, idxs)
  local owner = {}
  for k = 1, #owners, 2 do owner[owners[k]] = owners[k + 1] end
  local items = {}
  for _, i in ipairs(idxs) do
    local m = sm[i]
    -- on a retry, an index recycled for another sample since the first call is left out
    if m and (owner[i] == nil or owner[i] == m[SM_SID]) then
      items[#items + 1] = i
      items[#items + 1] = m[SM_SID]
      items[#items + 1] = m[SM_ADV]
      items[#items + 1] = m[SM_VER]
      items[#items + 1] = m[SM_GID]
    end
  end
  return {header, cmsgpack.pack({draws, items})}
end

--[[ ARGV: n, mode, learner_version, staleness_bound, reuse_cap, replay_capacity, replay_eps,
           seed, request_ttl_s, series_interval, stats_window, replay_max_age
Returns {{n_fresh, n_replay, fresh_avail, replay_avail, zero_avail}, packed draws and items}. ]]
local function sample(KEYS, ARGV)
  local n, mode, cur = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
  local bound, cap, rcap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local eps, seed, ttl = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local interval, window, max_age = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
  if not (n and n >= 0 and cur and bound and bound >= 0 and cap and cap >= 1 and rcap and rcap >= 0
          and finite(eps) and eps >= 0 and seed and ttl and interval and window and max_age and max_age >= 0) then
    return bad('sample: bad arguments')
  end
  if mode ~= 'ssr' and mode ~= 'filter' and mode ~= 'grpo' then
    return bad('sample: mode must be ssr, filter or grpo, got ' .. tostring(mode))
  end
  local lay_err = layout_error(KEYS, false)
  if lay_err then return lay_err end
  local req = KEYS[K_REQ]
  local prev = redis.call('GET', req)
  if prev then return batch_reply(KEYS, cmsgpack.unpack(prev)) end

  math.randomseed(seed)
  local C = counter_set()
  local P = pools_of(KEYS)
  local R = record_cache(KEYS[K_REC])
  local t = now_s()
  local lv = tonumber(redis.call('HGET', KEYS[K_META], 'learner_version') or '-1')
  if cur > lv then redis.call('HSET', KEYS[K_META], 'learner_version', cur) end

  -- staleness: evict every fresh-pool response whose version lags `cur` by more than `bound`;
  -- replay entries (off-policy by design) have their own, larger age limit
  local stale = redis.call('ZRANGEBYSCORE', KEYS[K_BYVER], '-inf', '(' .. (cur - bound))
  if #stale > 0 then
    local sidx = {}
    for k, v in ipairs(stale) do sidx[k] = tonumber(v) end
    local taken = unpool_all(KEYS, P, R, sidx, S_X)
    C.inc('stale_evicted', taken.f + taken.r + taken.z)
    C.inc('stale_evicted_fresh', taken.f)
  end
  local aged = redis.call('ZRANGEBYSCORE', KEYS[K_FIFO], '-inf', '(' .. fmt((cur - max_age) * TWO32))
  if #aged > 0 then
    local aidx = {}
    for k, v in ipairs(aged) do aidx[k] = tonumber(v) end
    local taken = unpool_all(KEYS, P, R, aidx, S_X)
    C.inc('replay_aged_out', taken.r)
  end

  local fst, rst, zst = load_state(P[S_F]), load_state(P[S_R]), load_state(P[S_Z])
  local header = {0, 0, fst.n, rst.n, zst.n}
  local draws = {}
  local ndraws = 0
  local gone = {}  -- idx -> true: no longer drawable in this call (reuse cap reached)
  local drawn_f, drawn_list = {}, {}  -- fresh responses drawn in this call -> pool state
  local capped_r = {}

  local function record(i, rec, code)
    rec[R_TS] = rec[R_TS] + 1
    R.put(i, rec)
    ndraws = ndraws + 1
    draws[#draws + 1] = i
    draws[#draws + 1] = code
    draws[#draws + 1] = rec[R_TS]
    C.inc('ru:' .. rec[R_TS], 1)
    if code == 'r' then header[2] = header[2] + 1 else header[1] = header[1] + 1 end
  end
  local function note_fresh(i, s)
    if not drawn_f[i] then
      drawn_f[i] = s
      drawn_list[#drawn_list + 1] = i
    end
  end

  if mode == 'ssr' then
    local function usable(i) return not gone[i] end
    local function accept_from(st, code)
      return function(i, rec)
        record(i, rec, code)
        if code == 'f' then note_fresh(i, S_F) end
        if rec[R_TS] >= cap then
          gone[i] = true
          st.present = st.present - 1
          if code == 'r' then capped_r[#capped_r + 1] = i end
        end
      end
    end
    -- fresh effective responses first (with replacement); when there are fewer of them than n,
    -- each of them is worth one draw and the rest of the batch comes from the replay pool
    local k = n
    if fst.n < n and rst.n > 0 then k = fst.n end
    draw_weighted(fst, R, k, usable, accept_from(fst, 'f'))
    if ndraws < n and rst.present > 0 then
      draw_weighted(rst, R, n - ndraws, usable, accept_from(rst, 'r'))
    end
    if ndraws < n and fst.present > 0 then  -- replay exhausted by the reuse cap
      draw_weighted(fst, R, n - ndraws, usable, accept_from(fst, 'f'))
    end
  else
    local states = (mode == 'filter') and {fst} or {fst, zst}
    local picked = take_uniform(states, n)
    local pidx = {}
    for _, p in ipairs(picked) do pidx[#pidx + 1] = p[1] end
    R.load(pidx)
    for _, p in ipairs(picked) do
      record(p[1], R.get(p[1]), p[2].P.code)
      note_fresh(p[1], p[2].P.st)
    end
    if mode == 'filter' then
      -- too few effective responses: repeat them (uniformly, in drawn order) to fill the batch
      local progress = #pidx > 0
      while ndraws < n and progress do
        progress = false
        for _, i in ipairs(pidx) do
          if ndraws >= n then break end
          local rec = R.get(i)
          if rec[R_TS] < cap then
            record(i, rec, 'f')
            progress = true
          end
        end
      end
    end
  end

  -- leave the fresh pools: drawn responses become replay candidates (FIFO, bounded) unless they
  -- reached the reuse cap or have zero advantage; capped replay responses retire
  local from = {[S_F] = {}, [S_Z] = {}}
  for _, i in ipairs(drawn_list) do
    local list = from[drawn_f[i]]
    list[#list + 1] = i
  end
  local ts_of = {}
  for _, i in ipairs(drawn_list) do ts_of[i] = R.get(i)[R_TS] end
  if #from[S_F] > 0 then batch_remove(P[S_F], R, from[S_F]) end
  if #from[S_Z] > 0 then batch_remove(P[S_Z], R, from[S_Z]) end
  if #capped_r > 0 then
    batch_remove(P[S_R], R, capped_r)
    call_chunked('ZREM', KEYS[K_FIFO], capped_r)
  end
  local to_replay, retired = {}, {}
  local eff = {}
  local sm = smeta_get(KEYS, distinct_drawn(draws))  -- replay weights, and the reply
  if rcap > 0 and #from[S_F] > 0 then
    for _, i in ipairs(from[S_F]) do
      if ts_of[i] < cap and sm[i] then
        to_replay[#to_replay + 1] = {i, R.get(i), sm[i][SM_BASE] + eps}
        eff[i] = true
      end
    end
  end
  for _, i in ipairs(drawn_list) do
    if not eff[i] then retired[#retired + 1] = i end
  end
  for _, i in ipairs(capped_r) do retired[#retired + 1] = i end
  if #to_replay > 0 then
    batch_add(P[S_R], R, to_replay)
    local last = redis.call('HINCRBY', KEYS[K_COUNTERS], 'replay_seq', #to_replay)
    local fifo_args, moved = {}, {}
    for k, it in ipairs(to_replay) do
      fifo_args[#fifo_args + 1] = fmt(sm[it[1]][SM_VER] * TWO32 + (last - #to_replay + k) % TWO32)
      fifo_args[#fifo_args + 1] = it[1]
      moved[#moved + 1] = it[1]
    end
    call_chunked('ZREM', KEYS[K_BYVER], moved)
    call_chunked('ZADD', KEYS[K_FIFO], fifo_args, 2 * CHUNK)
    C.inc('moved_to_replay', #to_replay)
  end
  for _, i in ipairs(retired) do
    local rec = R.get(i)
    rec[R_ST] = S_T
    R.put(i, rec)
  end
  if #retired > 0 then call_chunked('ZREM', KEYS[K_BYVER], retired) end
  C.inc('retired', #retired)

  -- bounded replay pool: the oldest entries (by policy version) beyond replay_capacity leave it
  local over = redis.call('ZCARD', KEYS[K_FIFO]) - rcap
  if over > 0 then
    local popped = redis.call('ZPOPMIN', KEYS[K_FIFO], over)
    local pidx = {}
    for k = 1, #popped, 2 do pidx[#pidx + 1] = tonumber(popped[k]) end
    local taken = unpool_all(KEYS, P, R, pidx, S_T)
    C.inc('replay_evicted', taken.r)
  end
  R.flush()

  C.inc('draws', ndraws)
  C.inc('draws_fresh', header[1])
  C.inc('draws_replay', header[2])
  C.inc('sample_calls', 1)
  if ndraws == 0 then C.inc('empty_sample_calls', 1) end
  C.flush(KEYS[K_COUNTERS])
  maybe_point(KEYS, interval, window, t)

  local owners = {}
  for i, m in pairs(sm) do
    owners[#owners + 1] = i
    owners[#owners + 1] = m[SM_SID]
  end
  local rec = {header, draws, owners}
  if ttl > 0 then redis.call('SET', req, cmsgpack.pack(rec), 'EX', ttl) end
  return batch_reply(KEYS, rec, sm)
end

-- --------------------------------------------------------------------------- store: reads

-- ARGV: kind ('sample' | 'group'), id.  Metadata only (the client reads the payload keys):
-- sample -> {adv, ver, ts, pool, gid} or {};  group -> {created, n, sid_1, adv_1, ver_1, ts_1,
-- pool_1, gid_1, ...} or {}.
local function get(KEYS, ARGV)
  local kind, id = ARGV[1], ARGV[2]
  local R = record_cache(KEYS[K_REC])
  local function one(i, m)
    local rec = R.get(i)
    return {fmt(m[SM_ADV]), m[SM_VER], rec[R_TS], STATE_CODE[rec[R_ST]] or '-', m[SM_GID]}
  end
  if kind == 'sample' then
    local i = tonumber(redis.call('HGET', KEYS[K_SIDX], id))
    if not i then return {} end
    local m = smeta_get(KEYS, {i})[i]
    return m and one(i, m) or {}
  end
  local raw = redis.call('HGET', KEYS[K_GMETA], id)
  if not raw then return {} end
  local gm = cmsgpack.unpack(raw)
  local idxs = gm[2]
  local out = {fmt(gm[4]), #idxs}
  local sm = smeta_get(KEYS, idxs)
  R.load(idxs)
  for _, i in ipairs(idxs) do
    local m = sm[i]
    if m then
      out[#out + 1] = m[SM_SID]
      for _, v in ipairs(one(i, m)) do out[#out + 1] = v end
    end
  end
  return out
end

-- Sizes of the pools: {fresh, replay, zero, stored, groups}.
local function sizes(KEYS, ARGV)
  local P = pools_of(KEYS)
  return {pool_size(P[S_F]), pool_size(P[S_R]), pool_size(P[S_Z]),
          tonumber(redis.call('HGET', KEYS[K_COUNTERS], 'stored') or '0'),
          redis.call('HLEN', KEYS[K_GMETA])}
end

-- ARGV: learner_version (-1: use the store's), max_lag.
-- Returns {sizes, counters flat, staleness {lag, count...}, series, vser flat, meta flat, version, now}.
local function stats(KEYS, ARGV)
  local cur = tonumber(ARGV[1])
  local maxlag = tonumber(ARGV[2])
  if cur == nil or cur < 0 then
    cur = tonumber(redis.call('HGET', KEYS[K_META], 'learner_version') or '0')
  end
  local stale = {}
  stale[#stale + 1] = 'ahead'
  stale[#stale + 1] = redis.call('ZCOUNT', KEYS[K_BYVER], '(' .. cur, '+inf')
  for lag = 0, maxlag do
    stale[#stale + 1] = tostring(lag)
    stale[#stale + 1] = redis.call('ZCOUNT', KEYS[K_BYVER], (cur - lag), (cur - lag))
  end
  stale[#stale + 1] = 'older'
  stale[#stale + 1] = redis.call('ZCOUNT', KEYS[K_BYVER], '-inf', '(' .. (cur - maxlag))
  return {sizes(KEYS, ARGV), redis.call('HGETALL', KEYS[K_COUNTERS]), stale,
          redis.call('LRANGE', KEYS[K_SERIES], 0, -1), redis.call('HGETALL', KEYS[K_VSER]),
          redis.call('HGETALL', KEYS[K_META]), cur, fmt(now_s())}
end

-- --------------------------------------------------------------------------- prompt queue

--[[ KEYS: stream, published-hash per distinct epoch...
ARGV: group, max_inflight, force(0|1), count, then count times: key_index, prompt_id, task_id, payload.
Returns {published, {duplicate task ids}, {deferred task ids}}. ]]
local function q_publish(KEYS, ARGV)
  local max_inflight, force, count = tonumber(ARGV[2]), ARGV[3] == '1', tonumber(ARGV[4])
  if not (max_inflight and count) or #ARGV ~= 4 + 4 * count then return bad('publish: bad arguments') end
  local stream = KEYS[1]
  local inflight = redis.call('XLEN', stream)
  local published, dups, deferred = 0, {}, {}
  for i = 1, count do
    local b = 4 + 4 * (i - 1)
    local kidx, pid, tid, payload = tonumber(ARGV[b + 1]), ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
    local pub = KEYS[kidx]
    if pub == nil then return bad('publish: bad key index') end
    if redis.call('HEXISTS', pub, pid) == 1 then
      dups[#dups + 1] = tid
    elseif (not force) and inflight >= max_inflight then
      deferred[#deferred + 1] = tid
    else
      redis.call('XADD', stream, '*', 't', tid, 'd', payload, 'r', 0)
      redis.call('HSET', pub, pid, tid)
      inflight = inflight + 1
      published = published + 1
    end
  end
  return {published, dups, deferred}
end

-- KEYS: stream; ARGV: group, entry id.  1 when the entry was pending and is now done.
local function q_ack(KEYS, ARGV)
  local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  if n == 1 then redis.call('XDEL', KEYS[1], ARGV[2]) end
  return n
end

-- KEYS: stream; ARGV: group, entry id.  Re-queues a pending entry at once (new entry id).
local function q_release(KEYS, ARGV)
  local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  if n ~= 1 then return 0 end
  local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  if #e == 0 then return 0 end
  local f = e[1][2]
  local fields = {}
  for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
  redis.call('XADD', KEYS[1], '*', 't', fields['t'], 'd', fields['d'], 'r', (tonumber(fields['r']) or 0) + 1)
  return 1
end

-- KEYS: stream; ARGV: group.  {inflight (entries not acked), pending (delivered, not acked)}.
local function q_stats(KEYS, ARGV)
  local inflight = redis.call('XLEN', KEYS[1])
  local pending = 0
  local ok = redis.pcall('XPENDING', KEYS[1], ARGV[1])
  if type(ok) == 'table' and ok.err == nil then pending = tonumber(ok[1]) or 0 end
  return {inflight, pending}
end

-- --------------------------------------------------------------------------- registry

-- KEYS: servers hash, alive zset; ARGV: id, info json, ttl_s.
local function w_heartbeat(KEYS, ARGV)
  local ttl = tonumber(ARGV[3])
  if not (ttl and ttl > 0) then return bad('heartbeat: ttl must be > 0') end
  local t = now_s()
  redis.call('ZADD', KEYS[2], fmt(t + ttl), ARGV[1])
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return fmt(t)
end

local function w_unregister(KEYS, ARGV)
  redis.call('ZREM', KEYS[2], ARGV[1])
  return redis.call('HDEL', KEYS[1], ARGV[1])
end

-- KEYS: servers hash, alive zset.  Prunes expired registrations; returns {id, info, expires_at...}.
local function w_live(KEYS, ARGV)
  local t = fmt(now_s())
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', t)
  for _, id in ipairs(dead) do redis.call('HDEL', KEYS[1], id) end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', t) end
  local live = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  local out = {}
  for i = 1, #live, 2 do
    local info = redis.call('HGET', KEYS[1], live[i])
    if info then
      out[#out + 1] = live[i]
      out[#out + 1] = info
      out[#out + 1] = live[i + 1]
    end
  end
  return out
end

-- --------------------------------------------------------------------------- registration

redis.register_function{function_name = 'rtk_version', callback = function() return VERSION end, flags = {'no-writes'}}
redis.register_function('rtk_add_group', add_group)
redis.register_function('rtk_sample', sample)
redis.register_function{function_name = 'rtk_get', callback = get, flags = {'no-writes'}}
redis.register_function{function_name = 'rtk_sizes', callback = sizes, flags = {'no-writes'}}
redis.register_function{function_name = 'rtk_stats', callback = stats, flags = {'no-writes'}}
redis.register_function('rtk_q_publish', q_publish)
redis.register_function('rtk_q_ack', q_ack)
redis.register_function('rtk_q_release', q_release)
redis.register_function{function_name = 'rtk_q_stats', callback = q_stats, flags = {'no-writes'}}
redis.register_function('rtk_w_heartbeat', w_heartbeat)
redis.register_function('rtk_w_unregister', w_unregister)
redis.register_function('rtk_w_live', w_live)
