;; Paged-attention kernel for the CPU backend, 128-bit WebAssembly SIMD (no relaxed SIMD: its
;; fused multiply-add would make results depend on the host CPU).
;;
;; The JavaScript side (wasm-attention.ts) gathers one sequence's K and V rows (all KV heads,
;; [n, numKvHeads * d], row stride $ks bytes) out of the paged cache into this module's memory,
;; copies the query rows of a block of consecutive positions ([rows, hq, d]), and calls:
;;   attn   for every query head h and row r: out[r, h] = softmax(scale * q[r, h] . K[0..n0 + r))
;;          . V[0..n0 + r), K and V being those of KV head h / g (GQA: g query heads share one)
;; Layout contract: d a multiple of 4; K has room for n rows rounded up to 8 (the rows past the
;; last real one may hold anything: their scores are overwritten); the scores scratch has as
;; many f32; all addresses and $ks are 16-byte aligned.
;;
;; Determinism: a query row's output depends only on its own q, its n keys and values, d and
;; scale, never on the other rows or heads of the call, so a token gives the same bits alone or
;; in a batch and whichever row block it falls in: each score is one f32x4 accumulator (lane j
;; sums q[i] * k[i] for i = j mod 4, in increasing i; wasm never fuses multiply and add) reduced
;; as (l0 + l2) + (l1 + l3); the max is exact; exp is the fixed polynomial below; the sum of the
;; exps and every output element are summed in increasing position, then scaled by 1 / sum.
(module
  (memory (export "mem") 1)

  ;; Lanes r[i] = (a_i[0] + a_i[2]) + (a_i[1] + a_i[3]): four dot products at once.
  (func $hsum4 (param $a0 v128) (param $a1 v128) (param $a2 v128) (param $a3 v128) (result v128)
    (local $u0 v128) (local $u1 v128)
    ;; u0 = (a0[0]+a0[2], a1[0]+a1[2], a0[1]+a0[3], a1[1]+a1[3]), u1 likewise for a2, a3
    (local.set $u0
      (f32x4.add
        (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a0) (local.get $a1))
        (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a0) (local.get $a1))))
    (local.set $u1
      (f32x4.add
        (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a2) (local.get $a3))
        (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a2) (local.get $a3))))
    ;; (u0[0]+u0[2], u0[1]+u0[3], u1[0]+u1[2], u1[1]+u1[3])
    (f32x4.add
      (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $u0) (local.get $u1))
      (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $u0) (local.get $u1))))

  ;; exp(x) for x <= 0 (softmax arguments, score - max), within ~2 ulp: Cephes expf's range
  ;; reduction x = k ln2 + r, |r| <= ln2 / 2, its degree-7 polynomial for e^r, then 2^k built in
  ;; the exponent bits. Below -87, where 2^k would leave the normal range, the result is 0 (it
  ;; would be under 1.7e-38 beside the max's exp of 1), and so it is for -inf and NaN.
  (func $exp (param $x v128) (result v128)
    (local $k v128) (local $r v128) (local $p v128) (local $ok v128)
    (local.set $ok (f32x4.ge (local.get $x) (v128.const f32x4 -87 -87 -87 -87)))
    (local.set $x (f32x4.max (local.get $x) (v128.const f32x4 -87 -87 -87 -87)))
    (local.set $k
      (f32x4.nearest (f32x4.mul (local.get $x) (v128.const f32x4 1.44269504088896341 1.44269504088896341 1.44269504088896341 1.44269504088896341))))
    ;; r = x - k ln2 in two steps (ln2 = C1 + C2, C1 with few bits so that k C1 is exact)
    (local.set $r (f32x4.sub (local.get $x) (f32x4.mul (local.get $k) (v128.const f32x4 0.693359375 0.693359375 0.693359375 0.693359375))))
    (local.set $r (f32x4.sub (local.get $r) (f32x4.mul (local.get $k) (v128.const f32x4 -2.12194440e-4 -2.12194440e-4 -2.12194440e-4 -2.12194440e-4))))
    (local.set $p (v128.const f32x4 1.9875691500e-4 1.9875691500e-4 1.9875691500e-4 1.9875691500e-4))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (v128.const f32x4 1.3981999507e-3 1.3981999507e-3 1.3981999507e-3 1.3981999507e-3)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (v128.const f32x4 8.3334519073e-3 8.3334519073e-3 8.3334519073e-3 8.3334519073e-3)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (v128.const f32x4 4.1665795894e-2 4.1665795894e-2 4.1665795894e-2 4.1665795894e-2)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (v128.const f32x4 1.6666665459e-1 1.6666665459e-1 1.6666665459e-1 1.6666665459e-1)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (v128.const f32x4 5.0000001201e-1 5.0000001201e-1 5.0000001201e-1 5.0000001201e-1)))
    ;; e^r = p r^2 + r + 1
    (local.set $p
      (f32x4.add
        (f32x4.add (f32x4.mul (local.get $p) (f32x4.mul (local.get $r) (local.get $r))) (local.get $r))
        (v128.const f32x4 1 1 1 1)))
    ;; times 2^k: k >= -126 here, so (k + 127) << 23 is a normal f32's bits
    (v128.and
      (f32x4.mul
        (local.get $p)
        (i32x4.shl (i32x4.add (i32x4.trunc_sat_f32x4_s (local.get $k)) (v128.const i32x4 127 127 127 127)) (i32.const 23)))
      (local.get $ok)))

  ;; One query row: out[0..d) = softmax(scale * q . K[0..n)) . V[0..n); K and V rows $ks bytes apart.
  (func $row (param $q i32) (param $k i32) (param $v i32) (param $ks i32) (param $d i32) (param $n i32)
    (param $scale f32) (param $sc i32) (param $out i32)
    (local $db i32) (local $n8 i32) (local $p i32) (local $i i32) (local $sp i32) (local $send i32)
    (local $k0 i32) (local $k1 i32) (local $k2 i32) (local $k3 i32)
    (local $k4 i32) (local $k5 i32) (local $k6 i32) (local $k7 i32)
    (local $qv v128) (local $s0 v128) (local $s1 v128) (local $s2 v128) (local $s3 v128)
    (local $s4 v128) (local $s5 v128) (local $s6 v128) (local $s7 v128)
    (local $m v128) (local $mx f32) (local $e v128) (local $inv v128) (local $w v128)
    (local $c i32) (local $vp i32) (local $vend i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $a4 v128) (local $a5 v128) (local $a6 v128) (local $a7 v128)
    (local.set $db (i32.shl (local.get $d) (i32.const 2)))
    (local.set $n8 (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8)))
    (local.set $send (i32.add (local.get $sc) (i32.shl (local.get $n8) (i32.const 2))))

    ;; scores[p] = scale * (q . k_p), eight keys at a time (eight independent sums)
    (local.set $sp (local.get $sc))
    (local.set $k0 (local.get $k))
    (block $sdone
      (loop $snext
        (br_if $sdone (i32.ge_u (local.get $sp) (local.get $send)))
        (local.set $k1 (i32.add (local.get $k0) (local.get $ks)))
        (local.set $k2 (i32.add (local.get $k1) (local.get $ks)))
        (local.set $k3 (i32.add (local.get $k2) (local.get $ks)))
        (local.set $k4 (i32.add (local.get $k3) (local.get $ks)))
        (local.set $k5 (i32.add (local.get $k4) (local.get $ks)))
        (local.set $k6 (i32.add (local.get $k5) (local.get $ks)))
        (local.set $k7 (i32.add (local.get $k6) (local.get $ks)))
        (local.set $s0 (v128.const i32x4 0 0 0 0))
        (local.set $s1 (v128.const i32x4 0 0 0 0))
        (local.set $s2 (v128.const i32x4 0 0 0 0))
        (local.set $s3 (v128.const i32x4 0 0 0 0))
        (local.set $s4 (v128.const i32x4 0 0 0 0))
        (local.set $s5 (v128.const i32x4 0 0 0 0))
        (local.set $s6 (v128.const i32x4 0 0 0 0))
        (local.set $s7 (v128.const i32x4 0 0 0 0))
        (local.set $i (i32.const 0))
        (block $ddone
          (loop $dnext
            (br_if $ddone (i32.ge_u (local.get $i) (local.get $db)))
            (local.set $qv (v128.load (i32.add (local.get $q) (local.get $i))))
            (local.set $s0 (f32x4.add (local.get $s0) (f32x4.mul (local.get $qv) (v128.load (i32.add (local.get $k0) (local.get $i))))))
            (local.set $s1 (f32x4.add (local.get $s1) (f32x4.mul (local.get $qv) (v128.load (i32.add (local.get $k1) (local.get $i))))))
            (local.set $s2 (f32x4.add (local.get $s2) (f32x4.mul (local.get $qv) (v128.load (i32.add (local.get $k2) (local.get $i))))))
            (local.set $s3 (f32x4.add (local.get $s3) (f32x4.mul (local.get $qv) (v128.load (i32.add (local.get $k3) (local.get $i))))))
            (local.set $s4 (f32x4.add (local.get $s4) (f32x4.mul (local.get $qv) (v128.load (i32.add (local.get $k4) (local.get $i))))))
            (local.set $s5 (f32x4.add (local.get $s5) (f32x4.mul (local.get $qv) (v128.load (i32.add (local.get $k5) (local.get $i))))))
            (local.set $s6 (f32x4.add (local.get $s6) (f32x4.mul (local.get $qv) (v128.load (i32.add (local.get $k6) (local.get $i))))))
            (local.set $s7 (f32x4.add (local.get $s7) (f32x4.mul (local.get $qv) (v128.load (i32.add (local.get $k7) (local.get $i))))))
            (local.set $i (i32.add (local.get $i) (i32.const 16)))
            (br $dnext)))
        (v128.store (local.get $sp)
          (f32x4.mul (call $hsum4 (local.get $s0) (local.get $s1) (local.get $s2) (local.get $s3)) (f32x4.splat (local.get $scale))))
        (v128.store offset=16 (local.get $sp)
          (f32x4.mul (call $hsum4 (local.get $s4) (local.get $s5) (local.get $s6) (local.get $s7)) (f32x4.splat (local.get $scale))))
        (local.set $k0 (i32.add (local.get $k7) (local.get $ks)))
        (local.set $sp (i32.add (local.get $sp) (i32.const 32)))
        (br $snext)))

    ;; the rows past n are not keys of this row: -inf, whose exp is 0
    (local.set $p (local.get $n))
    (block $mdone
      (loop $mnext
        (br_if $mdone (i32.ge_u (local.get $p) (local.get $n8)))
        (f32.store (i32.add (local.get $sc) (i32.shl (local.get $p) (i32.const 2))) (f32.const -inf))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $mnext)))

    ;; the max (exact in any order)
    (local.set $m (v128.const f32x4 -inf -inf -inf -inf))
    (local.set $sp (local.get $sc))
    (block $xdone
      (loop $xnext
        (br_if $xdone (i32.ge_u (local.get $sp) (local.get $send)))
        (local.set $m (f32x4.max (local.get $m) (v128.load (local.get $sp))))
        (local.set $sp (i32.add (local.get $sp) (i32.const 16)))
        (br $xnext)))
    (local.set $mx
      (f32.max
        (f32.max (f32x4.extract_lane 0 (local.get $m)) (f32x4.extract_lane 1 (local.get $m)))
        (f32.max (f32x4.extract_lane 2 (local.get $m)) (f32x4.extract_lane 3 (local.get $m)))))

    ;; scores[p] = exp(scores[p] - max), and their sum (lane j: p = j mod 4, increasing p)
    (local.set $m (f32x4.splat (local.get $mx)))
    (local.set $a0 (v128.const i32x4 0 0 0 0))
    (local.set $sp (local.get $sc))
    (block $edone
      (loop $enext
        (br_if $edone (i32.ge_u (local.get $sp) (local.get $send)))
        (local.set $e (call $exp (f32x4.sub (v128.load (local.get $sp)) (local.get $m))))
        (v128.store (local.get $sp) (local.get $e))
        (local.set $a0 (f32x4.add (local.get $a0) (local.get $e)))
        (local.set $sp (i32.add (local.get $sp) (i32.const 16)))
        (br $enext)))
    (local.set $inv
      (f32x4.splat
        (f32.div (f32.const 1)
          (f32.add
            (f32.add (f32x4.extract_lane 0 (local.get $a0)) (f32x4.extract_lane 2 (local.get $a0)))
            (f32.add (f32x4.extract_lane 1 (local.get $a0)) (f32x4.extract_lane 3 (local.get $a0)))))))

    ;; out[c..] = (sum_p e_p v_p[c..]) / sum, 32 columns at a time (eight independent sums),
    ;; then 4 at a time; either way each column is summed over p in increasing order.
    (local.set $vend (i32.add (local.get $v) (i32.mul (local.get $n) (local.get $ks))))
    (local.set $c (i32.const 0))
    (block $wdone
      (loop $wnext
        (br_if $wdone (i32.gt_u (i32.add (local.get $c) (i32.const 128)) (local.get $db)))
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0))
        (local.set $a3 (v128.const i32x4 0 0 0 0))
        (local.set $a4 (v128.const i32x4 0 0 0 0))
        (local.set $a5 (v128.const i32x4 0 0 0 0))
        (local.set $a6 (v128.const i32x4 0 0 0 0))
        (local.set $a7 (v128.const i32x4 0 0 0 0))
        (local.set $vp (i32.add (local.get $v) (local.get $c)))
        (local.set $vend (i32.add (local.get $vp) (i32.mul (local.get $n) (local.get $ks))))
        (local.set $sp (local.get $sc))
        (block $pdone
          (loop $pnext
            (br_if $pdone (i32.ge_u (local.get $vp) (local.get $vend)))
            (local.set $w (v128.load32_splat (local.get $sp)))
            (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $w) (v128.load (local.get $vp)))))
            (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $w) (v128.load offset=16 (local.get $vp)))))
            (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $w) (v128.load offset=32 (local.get $vp)))))
            (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $w) (v128.load offset=48 (local.get $vp)))))
            (local.set $a4 (f32x4.add (local.get $a4) (f32x4.mul (local.get $w) (v128.load offset=64 (local.get $vp)))))
            (local.set $a5 (f32x4.add (local.get $a5) (f32x4.mul (local.get $w) (v128.load offset=80 (local.get $vp)))))
            (local.set $a6 (f32x4.add (local.get $a6) (f32x4.mul (local.get $w) (v128.load offset=96 (local.get $vp)))))
            (local.set $a7 (f32x4.add (local.get $a7) (f32x4.mul (local.get $w) (v128.load offset=112 (local.get $vp)))))
            (local.set $sp (i32.add (local.get $sp) (i32.const 4)))
            (local.set $vp (i32.add (local.get $vp) (local.get $ks)))
            (br $pnext)))
        (local.set $vp (i32.add (local.get $out) (local.get $c)))
        (v128.store (local.get $vp) (f32x4.mul (local.get $a0) (local.get $inv)))
        (v128.store offset=16 (local.get $vp) (f32x4.mul (local.get $a1) (local.get $inv)))
        (v128.store offset=32 (local.get $vp) (f32x4.mul (local.get $a2) (local.get $inv)))
        (v128.store offset=48 (local.get $vp) (f32x4.mul (local.get $a3) (local.get $inv)))
        (v128.store offset=64 (local.get $vp) (f32x4.mul (local.get $a4) (local.get $inv)))
        (v128.store offset=80 (local.get $vp) (f32x4.mul (local.get $a5) (local.get $inv)))
        (v128.store offset=96 (local.get $vp) (f32x4.mul (local.get $a6) (local.get $inv)))
        (v128.store offset=112 (local.get $vp) (f32x4.mul (local.get $a7) (local.get $inv)))
        (local.set $c (i32.add (local.get $c) (i32.const 128)))
        (br $wnext)))
    (block $tdone
      (loop $tnext
        (br_if $tdone (i32.ge_u (local.get $c) (local.get $db)))
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $vp (i32.add (local.get $v) (local.get $c)))
        (local.set $vend (i32.add (local.get $vp) (i32.mul (local.get $n) (local.get $ks))))
        (local.set $sp (local.get $sc))
        (block $qdone
          (loop $qnext
            (br_if $qdone (i32.ge_u (local.get $vp) (local.get $vend)))
            (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (v128.load32_splat (local.get $sp)) (v128.load (local.get $vp)))))
            (local.set $sp (i32.add (local.get $sp) (i32.const 4)))
            (local.set $vp (i32.add (local.get $vp) (local.get $ks)))
            (br $qnext)))
        (v128.store (i32.add (local.get $out) (local.get $c)) (f32x4.mul (local.get $a0) (local.get $inv)))
        (local.set $c (i32.add (local.get $c) (i32.const 16)))
        (br $tnext))))

  ;; Every query head h < hq and row r < rows of a block of consecutive positions: q and out are
  ;; [rows, hq, d]; row r sees the keys [0, n0 + r). Head-major, so that one KV head's rows stay
  ;; in cache while all its rows and query heads pass over them.
  (func (export "attn") (param $q i32) (param $out i32) (param $k i32) (param $v i32) (param $ks i32)
    (param $d i32) (param $rows i32) (param $hq i32) (param $g i32) (param $n0 i32) (param $scale f32) (param $sc i32)
    (local $h i32) (local $r i32) (local $kv i32) (local $o i32)
    (block $hdone
      (loop $hnext
        (br_if $hdone (i32.ge_u (local.get $h) (local.get $hq)))
        ;; byte offset of this head's KV head within a K/V row
        (local.set $kv (i32.shl (i32.mul (i32.div_u (local.get $h) (local.get $g)) (local.get $d)) (i32.const 2)))
        (local.set $r (i32.const 0))
        (block $rdone
          (loop $rnext
            (br_if $rdone (i32.ge_u (local.get $r) (local.get $rows)))
            (local.set $o (i32.shl (i32.mul (i32.add (i32.mul (local.get $r) (local.get $hq)) (local.get $h)) (local.get $d)) (i32.const 2)))
            (call $row
              (i32.add (local.get $q) (local.get $o))
              (i32.add (local.get $k) (local.get $kv))
              (i32.add (local.get $v) (local.get $kv))
              (local.get $ks) (local.get $d) (i32.add (local.get $n0) (local.get $r)) (local.get $scale) (local.get $sc)
              (i32.add (local.get $out) (local.get $o)))
            (local.set $r (i32.add (local.get $r) (i32.const 1)))
            (br $rnext)))
        (local.set $h (i32.add (local.get $h) (i32.const 1)))
        (br $hnext))))
)
