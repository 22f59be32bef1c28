#!lua name=rethinker_buffer
--[[
Server-side logic of the SSR buffer (Redis Functions, Redis >= 7.0).

Loaded by services/buffer/library.py, which replaces __LIB_VERSION__ by a hash of this file and
reloads the library when the running server holds another version (``rtk_version``).

Three groups of functions, each touching only keys of one hash tag (Cluster-ready):
  {s} trajectory store : rtk_add_group, rtk_sample, rtk_get, rtk_sizes, rtk_stats
  {q} prompt queue     : rtk_q_publish, rtk_q_ack, rtk_q_release, rtk_q_stats
  {w} registry         : rtk_w_heartbeat, rtk_w_unregister, rtk_w_live

Store layout (KEYS of every store function, in this order; see protocol.store_keys):
  1 sd:       prefix of the per-sample payload keys `sd:<sid>` (codec bytes of the Sample)
  2 smeta     hash sid -> cmsgpack {adv, w, ver, ts, pool, bucket, pos, gid, base}
  3 gd:       prefix of the per-group payload keys `gd:<gid>` (codec bytes of the Group without
              its samples: holds the task and its images)
  4 gmeta     hash gid -> cmsgpack {seq, sids, advs, created, category, source}
  5 gorder    list of gids, oldest first (capacity eviction)
  6 counters  hash of monotonic counters and histograms
  7..12       pools: fresh effective (f), replay (r), fresh zero-advantage (z); each pool is
              a `cnt` hash bucket -> count and a `slot` hash "bucket:pos" -> sid (dense per bucket)
  13 fifo     zset sid -> seq: replay FIFO order
  14 byver    zset sid -> policy version of every pooled sample (staleness eviction)
  15 series   list of cmsgpack points (time series for the stats endpoint)
  16 vser     hash version -> cmsgpack per-policy-version counts
  17 vidx     zset version -> version (bounds vser)
  18 meta     hash: learner_version, last_point_t
  19 request  (rtk_sample only) string key caching a batch for idempotent retries

Payload bytes never pass through Lua (copying megabytes into Lua strings costs more than the
whole sampling logic): add_group's payload keys are written by MSETNX in the same MULTI/EXEC as
the FCALL, which only checks, commits or deletes them; sample and get return ids and metadata
and the client fetches the payloads itself.

Sampling: a pool is split in power-of-two buckets by weight w = m * 2^e (frexp, m in [0.5,1)):
bucket e holds weights in [2^(e-1), 2^e).  A weighted proposal picks bucket e with probability
count_e * 2^e / sum, then a uniform slot in it, and is accepted with probability w / 2^e (>= 1/2):
accepted draws have P(j) proportional to w_j exactly, for an expected O(1) work per draw (the
bucket scan covers the few non-empty buckets, independent of the store size).  Proposals are made
in rounds and their slots and metadata fetched with one HMGET each; a response that leaves the pool
during the call (reuse cap) stays in its slot until the end of the call and is rejected when
proposed, which keeps the draws exact (rejection from a superset).  Slots are dense: removals fill
holes with the bucket's tail entries, in batches per bucket.
]]

local VERSION = '__LIB_VERSION__'
local MAX_ROUNDS = 64
local CHUNK = 1000
local ZERO_TOL = 1e-12
local W_MIN, W_MAX = 1e-300, 1e300
local ADV_BINS, ADV_LO, ADV_HI = 20, -2.5, 2.5

local K_SDATA, K_SMETA, K_GDATA, K_GMETA, K_GORDER, K_COUNTERS = 1, 2, 3, 4, 5, 6
local N_FIXED = 18
local K_FCNT, K_FSLOT, K_RCNT, K_RSLOT, K_ZCNT, K_ZSLOT = 7, 8, 9, 10, 11, 12
local K_FIFO, K_BYVER, K_SERIES, K_VSER, K_VIDX, K_META, K_REQ = 13, 14, 15, 16, 17, 18, 19

-- meta fields
local M_ADV, M_W, M_VER, M_TS, M_POOL, M_E, M_POS, M_GID, M_BASE = 1, 2, 3, 4, 5, 6, 7, 8, 9

-- --------------------------------------------------------------------------- helpers

local function fmt(x)
  return string.format('%.17g', x)
end

local function bad(msg)
  return redis.error_reply('RTK_BADARG ' .. msg)
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
    f = {code = 'f', cnt = KEYS[K_FCNT], slot = KEYS[K_FSLOT]},
    r = {code = 'r', cnt = KEYS[K_RCNT], slot = KEYS[K_RSLOT]},
    z = {code = 'z', cnt = KEYS[K_ZCNT], slot = KEYS[K_ZSLOT]},
  }
end

-- Commands over long argument lists, in chunks (Lua's unpack has a stack limit).
local function call_chunked(cmd, key, list, step)
  step = step or CHUNK
  local out = nil
  for i = 1, #list, step do
    local part = {}
    for j = i, math.min(i + step - 1, #list) do part[#part + 1] = list[j] end
    local r = redis.call(cmd, key, unpack(part))
    if type(r) == 'table' then
      out = out or {}
      for _, v in ipairs(r) do out[#out + 1] = v end
    end
  end
  return out or {}
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

local function hset_pairs(key, pairs_list)
  if #pairs_list > 0 then call_chunked('HSET', key, pairs_list, 2 * CHUNK) end
end

local function del_fields(cmd, key, list)
  if #list > 0 then call_chunked(cmd, key, list) end
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

-- A per-call cache of sample metadata; dirty entries are written once at the end.
local function meta_cache(smeta_key)
  local c = {data = {}, dirty = {}, order = {}}
  function c.prefetch(sids)
    local want, seen = {}, {}
    for _, sid in ipairs(sids) do
      if sid and c.data[sid] == nil and not seen[sid] then
        seen[sid] = true
        want[#want + 1] = sid
      end
    end
    local raws = hmget(smeta_key, want)
    for i, sid in ipairs(want) do
      if raws[i] then c.data[sid] = cmsgpack.unpack(raws[i]) end
    end
  end
  function c.get(sid)
    local m = c.data[sid]
    if m == nil then
      local raw = redis.call('HGET', smeta_key, sid)
      if not raw then return nil end
      m = cmsgpack.unpack(raw)
      c.data[sid] = m
    end
    return m
  end
  function c.put(sid, m)
    c.data[sid] = m
    if not c.dirty[sid] then
      c.dirty[sid] = true
      c.order[#c.order + 1] = sid
    end
  end
  function c.drop(sid)
    c.data[sid] = nil
    c.dirty[sid] = nil
  end
  function c.flush()
    local args = {}
    for _, sid in ipairs(c.order) do
      if c.dirty[sid] then
        args[#args + 1] = sid
        args[#args + 1] = cmsgpack.pack(c.data[sid])
      end
    end
    hset_pairs(smeta_key, args)
    c.dirty, c.order = {}, {}
  end
  return c
end

-- Add items {sid, meta, weight} to pool P: one HINCRBY and one HSET per bucket.
local function batch_add(P, M, items)
  local by_bucket, order = {}, {}
  for _, it in ipairs(items) do
    local w = clampw(it[3])
    local _, e = math.frexp(w)
    it[3] = w
    if not by_bucket[e] then
      by_bucket[e] = {}
      order[#order + 1] = e
    end
    local b = by_bucket[e]
    b[#b + 1] = it
  end
  for _, e in ipairs(order) do
    local list = by_bucket[e]
    local c = redis.call('HINCRBY', P.cnt, e, #list)
    local base = c - #list
    local hs = {}
    for i, it in ipairs(list) do
      local m = it[2]
      m[M_W], m[M_POOL], m[M_E], m[M_POS] = it[3], P.code, e, base + i
      M.put(it[1], m)
      hs[#hs + 1] = e .. ':' .. (base + i)
      hs[#hs + 1] = it[1]
    end
    hset_pairs(P.slot, hs)
  end
end

-- Remove distinct sids (all in pool P, metadata cached) from P; each bucket stays dense: its tail
-- entries move into the holes.  A handful of calls per bucket, whatever the number removed.
local function batch_remove(P, M, sids)
  local by_bucket, order = {}, {}
  for _, sid in ipairs(sids) do
    local m = M.get(sid)
    local e = m[M_E]
    if not by_bucket[e] then
      by_bucket[e] = {}
      order[#order + 1] = e
    end
    local b = by_bucket[e]
    b[#b + 1] = m[M_POS]
    m[M_POOL], m[M_E], m[M_POS] = '-', 0, 0
    M.put(sid, m)
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
      if not gone[p] then tail[#tail + 1] = e .. ':' .. p end
    end
    if #holes > 0 then
      local movers = hmget(P.slot, tail)
      M.prefetch(movers)
      local hs = {}
      for i, sid in ipairs(movers) do
        hs[#hs + 1] = e .. ':' .. holes[i]
        hs[#hs + 1] = sid
        local mm = M.get(sid)
        mm[M_POS] = holes[i]
        M.put(sid, mm)
      end
      hset_pairs(P.slot, hs)
    end
    local dels = {}
    for p = c2 + 1, c do dels[#dels + 1] = e .. ':' .. p end
    del_fields('HDEL', P.slot, dels)
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

-- Up to `need` weighted draws with replacement from st; `usable(sid)` says whether a proposed
-- response may still be drawn, `accept(sid, m)` records a draw.  Returns the number drawn.
local function draw_weighted(st, M, need, usable, accept)
  local got, rounds = 0, 0
  while got < need and st.present > 0 and rounds < MAX_ROUNDS do
    rounds = rounds + 1
    local np = need - got + math.ceil((need - got) * 0.4) + 2
    local fields, es = {}, {}
    for i = 1, np do
      local bi = pick_bucket(st, true)
      es[i] = st.es[bi]
      fields[i] = es[i] .. ':' .. math.random(1, st.cs[bi])
    end
    local sids = hmget(st.P.slot, fields)
    M.prefetch(sids)
    for i = 1, np do
      if got >= need or st.present <= 0 then break end
      local sid = sids[i]
      if sid and usable(sid) then
        local m = M.get(sid)
        if m and math.random() * math.ldexp(1, es[i]) < m[M_W] then
          got = got + 1
          accept(sid, m)
        end
      end
    end
  end
  return got
end

-- Up to `need` distinct responses drawn uniformly from the union of the pools' states (without
-- replacement).  Returns a list of {sid, state}.
local function take_uniform(states, M, need)
  local total = 0
  for _, st in ipairs(states) do total = total + st.n end
  local out = {}
  if total == 0 or need <= 0 then return out end
  if need * 2 >= total then
    -- at least half of everything is wanted: read it all (O(need)) and shuffle
    local all = {}
    for _, st in ipairs(states) do
      if st.n > 0 then
        for _, sid in ipairs(redis.call('HVALS', st.P.slot)) do all[#all + 1] = {sid, st} end
      end
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
    local np = math.ceil((need - #out) * 1.5) + 4
    local per, props = {}, {}
    for i = 1, np do
      local u = math.random() * total
      local st = states[#states]
      local acc = 0
      for _, s in ipairs(states) do
        acc = acc + s.n
        if u < acc then st = s break end
      end
      local bi = pick_bucket(st, false)
      local field = st.es[bi] .. ':' .. math.random(1, st.cs[bi])
      per[st] = per[st] or {}
      local list = per[st]
      list[#list + 1] = field
      props[i] = {st, #list}
    end
    local got = {}
    for st, list in pairs(per) do got[st] = hmget(st.P.slot, list) end
    for i = 1, np do
      if #out >= need then break end
      local st, j = props[i][1], props[i][2]
      local sid = got[st][j]
      if sid and not taken[sid] then
        taken[sid] = true
        out[#out + 1] = {sid, st}
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
  pt[#pt + 1] = pool_size(P.f)
  pt[#pt + 1] = pool_size(P.r)
  pt[#pt + 1] = pool_size(P.z)
  pt[#pt + 1] = tonumber(redis.call('HGET', KEYS[K_META], 'learner_version') or '-1')
  redis.call('RPUSH', KEYS[K_SERIES], cmsgpack.pack(pt))
  redis.call('LTRIM', KEYS[K_SERIES], -window, -1)
end

-- Take sids (metadata cached) out of whatever pool holds them and out of the version index and
-- replay FIFO; marks them `code`.  Returns the number taken per pool code.
local function unpool_all(KEYS, P, M, sids, code)
  local per = {f = {}, r = {}, z = {}}
  local ver, fifo = {}, {}
  for _, sid in ipairs(sids) do
    local m = M.get(sid)
    if m then
      local pc = m[M_POOL]
      if per[pc] then
        local list = per[pc]
        list[#list + 1] = sid
        ver[#ver + 1] = sid
        if pc == 'r' then fifo[#fifo + 1] = sid end
      end
    end
  end
  for pc, list in pairs(per) do
    if #list > 0 then batch_remove(P[pc], M, list) end
  end
  for _, sid in ipairs(ver) do
    local m = M.get(sid)
    m[M_POOL] = code
    M.put(sid, m)
  end
  del_fields('ZREM', KEYS[K_BYVER], ver)
  del_fields('ZREM', KEYS[K_FIFO], fifo)
  return {f = #per.f, r = #per.r, z = #per.z}
end

-- Evict whole groups (oldest first) while more than `capacity` responses are stored.
local function evict_capacity(KEYS, P, M, C, capacity, keep_gid)
  local stored = tonumber(redis.call('HGET', KEYS[K_COUNTERS], 'stored') or '0') + (C.v['stored'] or 0)
  while stored > capacity do
    local old = redis.call('LINDEX', KEYS[K_GORDER], 0)
    if (not old) or old == keep_gid then break end
    redis.call('LPOP', KEYS[K_GORDER])
    local raw = redis.call('HGET', KEYS[K_GMETA], old)
    if raw then
      local osids = cmsgpack.unpack(raw)[2]
      M.prefetch(osids)
      local taken = unpool_all(KEYS, P, M, osids, 'e')
      for _, sid in ipairs(osids) do M.drop(sid) end
      del_fields('HDEL', KEYS[K_SMETA], osids)
      local dkeys = {KEYS[K_GDATA] .. old}
      for _, sid in ipairs(osids) do dkeys[#dkeys + 1] = KEYS[K_SDATA] .. sid end
      for i = 1, #dkeys, CHUNK do
        local part = {}
        for j = i, math.min(i + CHUNK - 1, #dkeys) do part[#part + 1] = dkeys[j] end
        redis.call('UNLINK', unpack(part))
      end
      redis.call('HDEL', KEYS[K_GMETA], old)
      C.inc('cap_evicted_fresh', taken.f)
      C.inc('cap_evicted_samples', #osids)
      C.inc('cap_evicted_groups', 1)
      C.inc('stored', -#osids)
      stored = stored - #osids
    end
  end
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
  local reg = hmget(KEYS[K_SMETA], sids)
  for i, k in ipairs(keys) do
    if not reg[i] then redis.call('DEL', k) end
  end
end

--[[ KEYS: the 18 store keys, then gd:<gid>, then sd:<sid> of each sample (written by MSETNX in the
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
    if v == nil or v ~= math.floor(v) then return reject('group ' .. gid .. ': sample ' .. sid .. ' policy version is not an integer') end
    sids[i], rewards[i], vers[i], corrects[i] = sid, r, v, ARGV[b + 4] == '1'
  end
  local clash = hmget(KEYS[K_SMETA], sids)
  for i = 1, n do
    if clash[i] then
      return reject('group ' .. gid .. ': sample id ' .. sids[i] .. ' is already stored (in another group)')
    end
  end
  local present = 0
  for i = N_FIXED + 1, #KEYS, CHUNK do
    local part = {}
    for j = i, math.min(i + CHUNK - 1, #KEYS) do part[#part + 1] = KEYS[j] end
    present = present + redis.call('EXISTS', unpack(part))
  end
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
  local C = counter_set()
  local t = now_s()
  local seq = redis.call('HINCRBY', KEYS[K_COUNTERS], 'group_seq', 1)
  redis.call('HSET', KEYS[K_GMETA], gid, cmsgpack.pack({seq, sids, advs, t, category, source}))
  redis.call('RPUSH', KEYS[K_GORDER], gid)
  local P = pools_of(KEYS)
  local M = meta_cache(KEYS[K_SMETA])
  local zargs, eff_items, zero_items = {}, {}, {}
  for i = 1, n do
    local sid, a = sids[i], advs[i]
    local base = (a ~= 0) and clampw(math.abs(a) ^ alpha) or 0
    local m = {a, 0, vers[i], 0, '-', 0, 0, gid, base}
    if a ~= 0 then
      eff_items[#eff_items + 1] = {sid, m, base}
      C.inc('ah:' .. adv_bin(a), 1)
    else
      zero_items[#zero_items + 1] = {sid, m, 1}
    end
    zargs[#zargs + 1] = vers[i]
    zargs[#zargs + 1] = sid
  end
  batch_add(P.f, M, eff_items)
  batch_add(P.z, M, zero_items)
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
  evict_capacity(KEYS, P, M, C, capacity, gid)
  M.flush()
  C.flush(KEYS[K_COUNTERS])
  maybe_point(KEYS, interval, window, t)

  local out = {1, n_eff}
  for i = 1, n do out[#out + 1] = fmt(advs[i]) end
  return out
end

-- --------------------------------------------------------------------------- store: sample

-- Reply of a batch: {header, cmsgpack({draws, items})} with draws = {sid, pool, ts, ...} and
-- items = {sid, adv, ver, gid, ...} for the distinct drawn responses still stored (one packed
-- string instead of ~1000 reply elements).  `rec` is {header, draws}; the client fetches payloads.
local function batch_reply(KEYS, M, rec)
  local header, draws = rec[1], rec[2]
  local sids, seen = {}, {}
  for i = 1, #draws, 3 do
    local sid = draws[i]
    if not seen[sid] then
      seen[sid] = true
      sids[#sids + 1] = sid
    end
  end
  M.prefetch(sids)
  local items = {}
  for _, sid in ipairs(sids) do
    local m = M.get(sid)
    if m then
      items[#items + 1] = sid
      items[#items + 1] = fmt(m[M_ADV])
      items[#items + 1] = m[M_VER]
      items[#items + 1] = m[M_GID]
    end
  end
  return {header, cmsgpack.pack({draws, items})}
end

--[[ ARGV: n, mode, learner_version, staleness_bound, reuse_cap, replay_capacity, replay_eps,
           seed, request_ttl_s, series_interval, stats_window
Returns {{n_fresh, n_replay, fresh_avail, replay_avail, zero_avail}, packed draws and items}. ]]
local function sample(KEYS, ARGV)
  local n, mode, cur = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
  local bound, cap, rcap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local eps, seed, ttl = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local interval, window = tonumber(ARGV[10]), tonumber(ARGV[11])
  if not (n and n >= 0 and cur and bound and bound >= 0 and cap and cap >= 1 and rcap and rcap >= 0
          and finite(eps) and eps >= 0 and seed and ttl and interval and window) then
    return bad('sample: bad arguments')
  end
  if mode ~= 'ssr' and mode ~= 'filter' and mode ~= 'grpo' then
    return bad('sample: mode must be ssr, filter or grpo, got ' .. tostring(mode))
  end
  local M = meta_cache(KEYS[K_SMETA])
  local req = KEYS[K_REQ]
  local prev = redis.call('GET', req)
  if prev then return batch_reply(KEYS, M, cmsgpack.unpack(prev)) end

  math.randomseed(seed)
  local C = counter_set()
  local P = pools_of(KEYS)
  local t = now_s()
  local lv = tonumber(redis.call('HGET', KEYS[K_META], 'learner_version') or '-1')
  if cur > lv then redis.call('HSET', KEYS[K_META], 'learner_version', cur) end

  -- staleness: evict every pooled response whose version lags `cur` by more than `bound`
  local stale = redis.call('ZRANGEBYSCORE', KEYS[K_BYVER], '-inf', '(' .. (cur - bound))
  if #stale > 0 then
    M.prefetch(stale)
    local taken = unpool_all(KEYS, P, M, stale, 'x')
    C.inc('stale_evicted', taken.f + taken.r + taken.z)
    C.inc('stale_evicted_fresh', taken.f)
    del_fields('ZREM', KEYS[K_BYVER], stale)  -- entries without metadata, if any
  end

  local fst, rst, zst = load_state(P.f), load_state(P.r), load_state(P.z)
  local header = {0, 0, fst.n, rst.n, zst.n}
  local draws = {}
  local ndraws = 0
  local gone = {}  -- sid -> true: no longer drawable in this call (reuse cap reached)
  local drawn_f, drawn_f_list = {}, {}  -- fresh responses drawn in this call
  local capped = {f = {}, r = {}, z = {}}

  local function record(sid, m, code)
    m[M_TS] = m[M_TS] + 1
    M.put(sid, m)
    ndraws = ndraws + 1
    draws[#draws + 1] = sid
    draws[#draws + 1] = code
    draws[#draws + 1] = m[M_TS]
    C.inc('ru:' .. m[M_TS], 1)
    if code == 'r' then header[2] = header[2] + 1 else header[1] = header[1] + 1 end
  end
  local function note_fresh(sid, code)
    if not drawn_f[sid] then
      drawn_f[sid] = code
      drawn_f_list[#drawn_f_list + 1] = sid
    end
  end

  if mode == 'ssr' then
    local function usable(sid) return not gone[sid] end
    local function accept_from(st, code)
      return function(sid, m)
        record(sid, m, code)
        if code == 'f' then note_fresh(sid, 'f') end
        if m[M_TS] >= cap then
          gone[sid] = true
          st.present = st.present - 1
          local list = capped[st.P.code]
          list[#list + 1] = sid
        end
      end
    end
    -- fresh effective responses first (with replacement); when there are fewer of them than n,
    -- each of them is worth one draw and the rest of the batch comes from the replay pool
    local k = n
    if fst.n < n and rst.n > 0 then k = fst.n end
    draw_weighted(fst, M, k, usable, accept_from(fst, 'f'))
    if ndraws < n and rst.present > 0 then
      draw_weighted(rst, M, n - ndraws, usable, accept_from(rst, 'r'))
    end
    if ndraws < n and fst.present > 0 then  -- replay exhausted by the reuse cap
      draw_weighted(fst, M, n - ndraws, usable, accept_from(fst, 'f'))
    end
  else
    local states = (mode == 'filter') and {fst} or {fst, zst}
    local picked = take_uniform(states, M, n)
    local psids = {}
    for _, p in ipairs(picked) do psids[#psids + 1] = p[1] end
    M.prefetch(psids)
    for _, p in ipairs(picked) do
      local sid, code = p[1], p[2].P.code
      record(sid, M.get(sid), code)
      note_fresh(sid, code)
    end
    if mode == 'filter' then
      -- too few effective responses: repeat them (uniformly, in drawn order) to fill the batch
      local progress = #psids > 0
      while ndraws < n and progress do
        progress = false
        for _, sid in ipairs(psids) do
          if ndraws >= n then break end
          local m = M.get(sid)
          if m[M_TS] < cap then
            record(sid, m, 'f')
            progress = true
          end
        end
      end
    end
  end

  -- leave the fresh pools: drawn responses become replay candidates (FIFO, bounded) unless they
  -- reached the reuse cap or have zero advantage; capped replay responses retire
  local from = {f = {}, z = {}}
  for _, sid in ipairs(drawn_f_list) do
    local code = drawn_f[sid]
    local list = from[code]
    list[#list + 1] = sid
  end
  if #from.f > 0 then batch_remove(P.f, M, from.f) end
  if #from.z > 0 then batch_remove(P.z, M, from.z) end
  if #capped.r > 0 then
    batch_remove(P.r, M, capped.r)
    del_fields('ZREM', KEYS[K_FIFO], capped.r)
  end
  local to_replay, retired, fifo_args = {}, {}, {}
  for _, sid in ipairs(drawn_f_list) do
    local m = M.get(sid)
    if m[M_ADV] ~= 0 and rcap > 0 and m[M_TS] < cap then
      to_replay[#to_replay + 1] = {sid, m, m[M_BASE] + eps}
    else
      retired[#retired + 1] = sid
    end
  end
  for _, sid in ipairs(capped.r) do retired[#retired + 1] = sid end
  if #to_replay > 0 then
    batch_add(P.r, M, to_replay)
    local last = redis.call('HINCRBY', KEYS[K_COUNTERS], 'replay_seq', #to_replay)
    for i, it in ipairs(to_replay) do
      fifo_args[#fifo_args + 1] = last - #to_replay + i
      fifo_args[#fifo_args + 1] = it[1]
    end
    call_chunked('ZADD', KEYS[K_FIFO], fifo_args, 2 * CHUNK)
    C.inc('moved_to_replay', #to_replay)
  end
  for _, sid in ipairs(retired) do
    local m = M.get(sid)
    m[M_POOL] = 't'
    M.put(sid, m)
  end
  del_fields('ZREM', KEYS[K_BYVER], retired)
  C.inc('retired', #retired)

  -- bounded replay pool: the oldest entries beyond replay_capacity leave it
  local over = redis.call('ZCARD', KEYS[K_FIFO]) - rcap
  if over > 0 then
    local popped = redis.call('ZPOPMIN', KEYS[K_FIFO], over)
    local psids = {}
    for i = 1, #popped, 2 do psids[#psids + 1] = popped[i] end
    M.prefetch(psids)
    local taken = unpool_all(KEYS, P, M, psids, 't')
    C.inc('replay_evicted', taken.r)
  end
  M.flush()

  C.inc('draws', ndraws)
  C.inc('draws_fresh', header[1])
  C.inc('draws_replay', header[2])
  C.inc('sample_calls', 1)
  if ndraws == 0 then C.inc('empty_sample_calls', 1) end
  C.flush(KEYS[K_COUNTERS])
  maybe_point(KEYS, interval, window, t)

  local rec = {header, draws}
  if ttl > 0 then redis.call('SET', req, cmsgpack.pack(rec), 'EX', ttl) end
  return batch_reply(KEYS, M, rec)
end

-- --------------------------------------------------------------------------- store: reads

-- ARGV: kind ('sample' | 'group'), id.  Metadata only (the client reads the payload keys):
-- sample -> {adv, ver, ts, pool, gid} or {};  group -> {created, n, sid_1, adv_1, ver_1, ts_1,
-- pool_1, gid_1, ...} or {}.
local function get(KEYS, ARGV)
  local kind, id = ARGV[1], ARGV[2]
  local function one(raw)
    local m = cmsgpack.unpack(raw)
    return {fmt(m[M_ADV]), m[M_VER], m[M_TS], m[M_POOL], m[M_GID]}
  end
  if kind == 'sample' then
    local raw = redis.call('HGET', KEYS[K_SMETA], id)
    return raw and one(raw) or {}
  end
  local raw = redis.call('HGET', KEYS[K_GMETA], id)
  if not raw then return {} end
  local gm = cmsgpack.unpack(raw)
  local out = {fmt(gm[4]), #gm[2]}
  local metas = hmget(KEYS[K_SMETA], gm[2])
  for i, sid in ipairs(gm[2]) do
    if metas[i] then
      out[#out + 1] = sid
      for _, v in ipairs(one(metas[i])) do out[#out + 1] = v end
    end
  end
  return out
end

-- Sizes of the pools: {fresh, replay, zero, stored, groups}.
local function sizes(KEYS, ARGV)
  local P = pools_of(KEYS)
  return {pool_size(P.f), pool_size(P.r), pool_size(P.z),
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
    stale[#stale + 1] = redis.call('ZCOUNT', KEYS[K_BYVER], cur - lag, cur - lag)
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
