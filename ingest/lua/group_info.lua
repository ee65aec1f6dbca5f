-- Shared by the scripts that read a consumer group's state (loaded before each of them).

-- A flat XINFO reply (name, value, name, value, ...) as a table.
local function to_table(flat)
  local t = {}
  for i = 1, #flat, 2 do
    t[flat[i]] = flat[i + 1]
  end
  return t
end

-- The XINFO GROUPS entry of one group of a stream, as a table; nil when there is none.
local function group_info(stream, name)
  for _, raw in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local group = to_table(raw)
    if group['name'] == name then
      return group
    end
  end
  return nil
end
