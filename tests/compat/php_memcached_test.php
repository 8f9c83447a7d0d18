<?php
// Compatibility suite: PHP's memcached extension (libmemcached, ASCII protocol) against a
// memcached-protocol server.
//
// Usage: php tests/compat/php_memcached_test.php PORT [HOST]
// Prints one line per check, then `php-memcached: N passed, M failed`; exits 1 on failure.

if ($argc < 2) {
    fwrite(STDERR, "usage: php php_memcached_test.php PORT [HOST]\n");
    exit(2);
}
$port = (int)$argv[1];
$host = $argc > 2 ? $argv[2] : '127.0.0.1';

function client(string $host, int $port, bool $compression = true): Memcached {
    $m = new Memcached();
    $m->setOption(Memcached::OPT_BINARY_PROTOCOL, false);
    $m->setOption(Memcached::OPT_COMPRESSION, $compression);
    $m->setOption(Memcached::OPT_CONNECT_TIMEOUT, 5000);
    $m->setOption(Memcached::OPT_RECV_TIMEOUT, 10000000);
    $m->setOption(Memcached::OPT_SEND_TIMEOUT, 10000000);
    $m->addServer($host, $port);
    return $m;
}

function check(bool $condition, string $what): void {
    if (!$condition) {
        throw new Exception("assertion failed: $what");
    }
}

$checks = [];

$checks['set_get'] = function (Memcached $m) {
    check($m->set('alpha', 'one'), 'set');
    check($m->get('alpha') === 'one', 'get after set');
    check($m->get('no-such-key') === false, 'miss returns false');
    check($m->getResultCode() === Memcached::RES_NOTFOUND, 'miss result code');
    check($m->set('alpha', 'two') && $m->get('alpha') === 'two', 'overwrite');
};

$checks['types_roundtrip'] = function (Memcached $m) {
    // The extension encodes PHP types in the item flags; the server must keep flags exactly.
    $values = ['int' => 42, 'float' => 2.5, 'bool' => true, 'array' => ['a' => [1, 2, 3]],
               'string' => "multi\r\nline\r\nEND\r\n"];
    foreach ($values as $key => $value) {
        check($m->set("type:$key", $value), "set $key");
        check($m->get("type:$key") === $value, "roundtrip $key");
    }
};

$checks['add_replace'] = function (Memcached $m) {
    $m->delete('ar');
    check($m->add('ar', '1'), 'add new');
    check(!$m->add('ar', '2'), 'add existing fails');
    check($m->getResultCode() === Memcached::RES_NOTSTORED, 'add result code');
    check($m->replace('ar', '3'), 'replace existing');
    check(!$m->replace('ar-missing', '4'), 'replace missing fails');
    check($m->get('ar') === '3', 'value after replace');
};

$checks['append_prepend'] = function (Memcached $unused) use ($host, $port) {
    $m = client($host, $port, false); // append/prepend need compression off
    check($m->set('ap', 'middle'), 'set');
    check($m->append('ap', '>end'), 'append');
    check($m->prepend('ap', 'start<'), 'prepend');
    check($m->get('ap') === 'start<middle>end', 'value after append/prepend');
    check(!$m->append('ap-missing', 'x'), 'append to missing fails');
};

$checks['cas'] = function (Memcached $m) {
    $m->set('cas', 'v1');
    $got = $m->get('cas', null, Memcached::GET_EXTENDED);
    check($got['value'] === 'v1' && $got['cas'] > 0, 'gets');
    check($m->cas($got['cas'], 'cas', 'v2'), 'cas with fresh token');
    check(!$m->cas($got['cas'], 'cas', 'v3'), 'cas with stale token fails');
    check($m->getResultCode() === Memcached::RES_DATA_EXISTS, 'stale cas result code');
    check($m->get('cas') === 'v2', 'value after cas');
};

$checks['incr_decr'] = function (Memcached $m) {
    $m->set('n', '10');
    check($m->increment('n', 5) === 15, 'incr');
    check($m->decrement('n', 3) === 12, 'decr');
    check($m->decrement('n', 100) === 0, 'decr floors at 0');
    check($m->increment('n-missing', 1) === false, 'incr missing');
};

$checks['touch_expiry'] = function (Memcached $m) {
    $m->set('ttl', 'soon', 1);
    $m->set('keep', 'stay', 1);
    check($m->touch('keep', 0), 'touch existing');
    check(!$m->touch('touch-missing', 10), 'touch missing fails');
    $deadline = microtime(true) + 5;
    while ($m->get('ttl') !== false && microtime(true) < $deadline) {
        usleep(100000);
    }
    check($m->get('ttl') === false, 'expired after ttl');
    check($m->get('keep') === 'stay', 'touched item kept');
};

$checks['delete'] = function (Memcached $m) {
    $m->set('del', 'x');
    check($m->delete('del'), 'delete existing');
    check($m->get('del') === false, 'gone after delete');
    check(!$m->delete('del'), 'delete missing fails');
    check($m->getResultCode() === Memcached::RES_NOTFOUND, 'delete missing result code');
};

$checks['multi_get'] = function (Memcached $m) {
    $values = [];
    for ($i = 0; $i < 100; $i++) {
        $values["multi:$i"] = "value $i";
    }
    check($m->setMulti($values), 'setMulti');
    $got = $m->getMulti(array_merge(array_keys($values), ['multi:missing']));
    ksort($got);
    ksort($values);
    check($got === $values, 'getMulti returns exactly the stored items');
};

$checks['big_multi_get'] = function (Memcached $m) {
    $values = [];
    for ($i = 0; $i < 2000; $i++) {
        $values[sprintf('bulk:%05d', $i)] = str_repeat(sprintf('%06d', $i), 50);
    }
    check($m->setMulti($values), 'setMulti 2000');
    $got = $m->getMulti(array_keys($values));
    check(count($got) === 2000, 'getMulti 2000 count: ' . count($got));
    foreach ($values as $key => $value) {
        check($got[$key] === $value, "value of $key");
    }
};

$checks['unicode'] = function (Memcached $m) {
    $text = 'Привет, мир! 你好 🐱 — «кошка»';
    check($m->set('unicode-value', $text), 'set unicode');
    check($m->get('unicode-value') === $text, 'get unicode');
    // libmemcached refuses non-ASCII keys client-side, so only values are checked here
    // (the pymemcache suite covers UTF-8 keys).
    check($m->set('unicode-ru', 'Съешь же ещё этих мягких французских булок'), 'set russian');
    check($m->get('unicode-ru') === 'Съешь же ещё этих мягких французских булок', 'get russian');
};

$checks['large_value'] = function (Memcached $unused) use ($host, $port) {
    $m = client($host, $port, false);
    $value = '';
    for ($i = 0; $i < 500 * 1024; $i++) {
        $value .= chr(($i * 7 + 3) % 251);
    }
    check($m->set('large', $value), 'set 500 KB');
    check($m->get('large') === $value, 'get 500 KB');
};

$checks['stats_version'] = function (Memcached $m) {
    $m->set('stat-key', 'x');
    $m->get('stat-key');
    $stats = $m->getStats();
    check(is_array($stats) && count($stats) === 1, 'one server in stats');
    $s = array_values($stats)[0];
    foreach (['pid', 'uptime', 'curr_items', 'cmd_get', 'get_hits', 'get_misses'] as $name) {
        check(array_key_exists($name, $s), "stats has $name");
    }
    check($s['get_hits'] >= 1, 'get_hits counted');
    $versions = $m->getVersion();
    check(is_array($versions) && strlen(array_values($versions)[0]) > 0, 'version');
};

$checks['flush_all'] = function (Memcached $m) {
    $m->set('f1', '1');
    $m->set('f2', '2');
    check($m->flush(), 'flush');
    check($m->get('f1') === false && $m->get('f2') === false, 'items gone after flush');
    check($m->set('f3', '3') && $m->get('f3') === '3', 'usable after flush');
};

$passed = 0;
$failed = 0;
foreach ($checks as $name => $fn) {
    $m = client($host, $port);
    try {
        $fn($m);
        $passed++;
        echo "ok   $name\n";
    } catch (Throwable $e) {
        $failed++;
        echo "FAIL $name: " . $e->getMessage() . " (result: " . $m->getResultMessage() . ")\n";
    }
    $m->quit();
}
echo "php-memcached: $passed passed, $failed failed\n";
exit($failed > 0 ? 1 : 0);
