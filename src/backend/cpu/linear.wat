;; Matrix-product kernels for the CPU backend, 128-bit WebAssembly SIMD (no relaxed SIMD:
;; its fused multiply-add would make results depend on the host CPU).
;;
;; The JavaScript side (wasm-linear.ts) copies operands into this module's memory and calls:
;;   cvt_bf16 / cvt_f16   decode a tile of raw 16-bit weights to f32, once per tile
;;   mm_f32               out[m, n] = x[m, :] . w[n, :] (+ bias[n]) over an f32 weight tile
;;   mm1_bf16             the same for a single row of x, reading bf16 weights directly
;;                        (decode: each weight is used once, so a separate decode pass costs
;;                        more than it saves)
;; Layout contract: rows of x and w have K elements, K a multiple of 8, zero-padded past the
;; real length (the zeros add exact zeros); N is a multiple of 4; out rows have N elements;
;; bias is N f32 at a nonzero address, or 0 for none. All addresses are 16-byte aligned.
;;
;; Determinism: every output element is computed with the same operations in the same order
;; whatever the tile it falls in: one f32x4 accumulator whose lane j sums x[k] * w[k] for
;; k = j (mod 4) in increasing k (multiply, then add: wasm never fuses them), then the fixed
;; reduction (l0 + l2) + (l1 + l3), then + bias. So a row gives the same bits alone or in a
;; batch, in any slice of the output features, and in the 4x2, 4x1 or bf16 paths.
(module
  (memory (export "mem") 1)

  ;; dst[i] = f32(src[i] << 16) for i < n (n a multiple of 8): bf16 is the top half of an f32.
  (func (export "cvt_bf16") (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $v v128)
    (local.set $end (i32.add (local.get $src) (i32.shl (local.get $n) (i32.const 1))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $src) (local.get $end)))
        (local.set $v (v128.load (local.get $src)))
        (v128.store (local.get $dst) (i32x4.shl (i32x4.extend_low_i16x8_u (local.get $v)) (i32.const 16)))
        (v128.store offset=16 (local.get $dst) (i32x4.shl (i32x4.extend_high_i16x8_u (local.get $v)) (i32.const 16)))
        (local.set $src (i32.add (local.get $src) (i32.const 16)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
        (br $next))))

  ;; dst[i] = f32(half src[i]) for i < n (n a multiple of 4), exactly, with integer operations
  ;; only: subnormal halves are renormalized by an exact f32 subtraction instead of being
  ;; built as f32 subnormals (which would be slow on some CPUs and are never produced here).
  (func (export "cvt_f16") (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $h v128) (local $em v128) (local $e v128) (local $o v128) (local $sub v128)
    (local.set $end (i32.add (local.get $src) (i32.shl (local.get $n) (i32.const 1))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $src) (local.get $end)))
        (local.set $h (v128.load16x4_u (local.get $src)))
        ;; exponent and mantissa moved to the f32 positions, exponent rebiased by 127 - 15
        (local.set $em (i32x4.shl (v128.and (local.get $h) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (i32.const 13)))
        (local.set $e (v128.and (local.get $em) (v128.const i32x4 0x0f800000 0x0f800000 0x0f800000 0x0f800000)))
        (local.set $o (i32x4.add (local.get $em) (v128.const i32x4 0x38000000 0x38000000 0x38000000 0x38000000)))
        ;; Inf/NaN (all-ones exponent): rebias once more so the f32 exponent is all ones too
        (local.set $o
          (i32x4.add (local.get $o)
            (v128.and
              (i32x4.eq (local.get $e) (v128.const i32x4 0x0f800000 0x0f800000 0x0f800000 0x0f800000))
              (v128.const i32x4 0x38000000 0x38000000 0x38000000 0x38000000))))
        ;; zero/subnormal: (2^-14 + m * 2^-24) - 2^-14, exact
        (local.set $sub
          (f32x4.sub
            (i32x4.add (local.get $o) (v128.const i32x4 0x00800000 0x00800000 0x00800000 0x00800000))
            (v128.const i32x4 0x38800000 0x38800000 0x38800000 0x38800000)))
        (local.set $o
          (v128.bitselect (local.get $sub) (local.get $o) (i32x4.eq (local.get $e) (v128.const i32x4 0 0 0 0))))
        (v128.store (local.get $dst)
          (v128.or (local.get $o)
            (i32x4.shl (v128.and (local.get $h) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))))
        (local.set $src (i32.add (local.get $src) (i32.const 8)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
        (br $next))))

  ;; The fixed reduction of four accumulators (one per output feature n..n+3):
  ;; lanes r[i] = (a_i[0] + a_i[2]) + (a_i[1] + a_i[3]), plus bias, stored at $dst.
  (func $finish (param $a0 v128) (param $a1 v128) (param $a2 v128) (param $a3 v128) (param $dst i32) (param $bias i32)
    (local $u0 v128) (local $u1 v128) (local $r v128)
    ;; u0 = (a0[0]+a0[2], a1[0]+a1[2], a0[1]+a0[3], a1[1]+a1[3]), u1 likewise for a2, a3
    (local.set $u0
      (f32x4.add
        (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a0) (local.get $a1))
        (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a0) (local.get $a1))))
    (local.set $u1
      (f32x4.add
        (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a2) (local.get $a3))
        (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a2) (local.get $a3))))
    (local.set $r
      (f32x4.add
        (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $u0) (local.get $u1))
        (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $u0) (local.get $u1))))
    (if (local.get $bias)
      (then (local.set $r (f32x4.add (local.get $r) (v128.load (local.get $bias))))))
    (v128.store (local.get $dst) (local.get $r)))

  ;; Four weight rows against two x rows: eight accumulators, each weight and x vector
  ;; loaded once per step and used two or four times.
  (func $tile4x2 (param $xa i32) (param $xb i32) (param $w0 i32) (param $k i32) (param $oa i32) (param $ob i32) (param $bias i32)
    (local $w1 i32) (local $w2 i32) (local $w3 i32) (local $end i32)
    (local $va v128) (local $vb v128) (local $v v128)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128)
    (local.set $w1 (i32.add (local.get $w0) (i32.shl (local.get $k) (i32.const 2))))
    (local.set $w2 (i32.add (local.get $w1) (i32.shl (local.get $k) (i32.const 2))))
    (local.set $w3 (i32.add (local.get $w2) (i32.shl (local.get $k) (i32.const 2))))
    (local.set $end (i32.add (local.get $xa) (i32.shl (local.get $k) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $xa) (local.get $end)))
        (local.set $va (v128.load (local.get $xa)))
        (local.set $vb (v128.load (local.get $xb)))
        (local.set $v (v128.load (local.get $w0)))
        (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $va) (local.get $v))))
        (local.set $b0 (f32x4.add (local.get $b0) (f32x4.mul (local.get $vb) (local.get $v))))
        (local.set $v (v128.load (local.get $w1)))
        (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $va) (local.get $v))))
        (local.set $b1 (f32x4.add (local.get $b1) (f32x4.mul (local.get $vb) (local.get $v))))
        (local.set $v (v128.load (local.get $w2)))
        (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $va) (local.get $v))))
        (local.set $b2 (f32x4.add (local.get $b2) (f32x4.mul (local.get $vb) (local.get $v))))
        (local.set $v (v128.load (local.get $w3)))
        (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $va) (local.get $v))))
        (local.set $b3 (f32x4.add (local.get $b3) (f32x4.mul (local.get $vb) (local.get $v))))
        (local.set $va (v128.load offset=16 (local.get $xa)))
        (local.set $vb (v128.load offset=16 (local.get $xb)))
        (local.set $v (v128.load offset=16 (local.get $w0)))
        (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $va) (local.get $v))))
        (local.set $b0 (f32x4.add (local.get $b0) (f32x4.mul (local.get $vb) (local.get $v))))
        (local.set $v (v128.load offset=16 (local.get $w1)))
        (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $va) (local.get $v))))
        (local.set $b1 (f32x4.add (local.get $b1) (f32x4.mul (local.get $vb) (local.get $v))))
        (local.set $v (v128.load offset=16 (local.get $w2)))
        (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $va) (local.get $v))))
        (local.set $b2 (f32x4.add (local.get $b2) (f32x4.mul (local.get $vb) (local.get $v))))
        (local.set $v (v128.load offset=16 (local.get $w3)))
        (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $va) (local.get $v))))
        (local.set $b3 (f32x4.add (local.get $b3) (f32x4.mul (local.get $vb) (local.get $v))))
        (local.set $xa (i32.add (local.get $xa) (i32.const 32)))
        (local.set $xb (i32.add (local.get $xb) (i32.const 32)))
        (local.set $w0 (i32.add (local.get $w0) (i32.const 32)))
        (local.set $w1 (i32.add (local.get $w1) (i32.const 32)))
        (local.set $w2 (i32.add (local.get $w2) (i32.const 32)))
        (local.set $w3 (i32.add (local.get $w3) (i32.const 32)))
        (br $next)))
    (call $finish (local.get $a0) (local.get $a1) (local.get $a2) (local.get $a3) (local.get $oa) (local.get $bias))
    (call $finish (local.get $b0) (local.get $b1) (local.get $b2) (local.get $b3) (local.get $ob) (local.get $bias)))

  ;; Four weight rows against one x row (an odd last row): the same per-element steps as $tile4x2.
  (func $tile4x1 (param $xa i32) (param $w0 i32) (param $k i32) (param $oa i32) (param $bias i32)
    (local $w1 i32) (local $w2 i32) (local $w3 i32) (local $end i32)
    (local $va v128)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local.set $w1 (i32.add (local.get $w0) (i32.shl (local.get $k) (i32.const 2))))
    (local.set $w2 (i32.add (local.get $w1) (i32.shl (local.get $k) (i32.const 2))))
    (local.set $w3 (i32.add (local.get $w2) (i32.shl (local.get $k) (i32.const 2))))
    (local.set $end (i32.add (local.get $xa) (i32.shl (local.get $k) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $xa) (local.get $end)))
        (local.set $va (v128.load (local.get $xa)))
        (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $va) (v128.load (local.get $w0)))))
        (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $va) (v128.load (local.get $w1)))))
        (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $va) (v128.load (local.get $w2)))))
        (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $va) (v128.load (local.get $w3)))))
        (local.set $va (v128.load offset=16 (local.get $xa)))
        (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $va) (v128.load offset=16 (local.get $w0)))))
        (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $va) (v128.load offset=16 (local.get $w1)))))
        (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $va) (v128.load offset=16 (local.get $w2)))))
        (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $va) (v128.load offset=16 (local.get $w3)))))
        (local.set $xa (i32.add (local.get $xa) (i32.const 32)))
        (local.set $w0 (i32.add (local.get $w0) (i32.const 32)))
        (local.set $w1 (i32.add (local.get $w1) (i32.const 32)))
        (local.set $w2 (i32.add (local.get $w2) (i32.const 32)))
        (local.set $w3 (i32.add (local.get $w3) (i32.const 32)))
        (br $next)))
    (call $finish (local.get $a0) (local.get $a1) (local.get $a2) (local.get $a3) (local.get $oa) (local.get $bias)))

  ;; out[m, n] for m < M, n < N over f32 weights w [N, K]: four weight rows at a time
  ;; (kept in L1 while the x rows stream past), x rows in pairs, an odd last row alone.
  (func (export "mm_f32") (param $x i32) (param $m i32) (param $k i32) (param $w i32) (param $n i32) (param $out i32) (param $bias i32)
    (local $j i32) (local $i i32) (local $xrow i32) (local $orow i32) (local $wg i32) (local $b i32)
    (block $ndone
      (loop $ngroup
        (br_if $ndone (i32.ge_u (local.get $j) (local.get $n)))
        (local.set $wg (i32.add (local.get $w) (i32.mul (local.get $j) (i32.shl (local.get $k) (i32.const 2)))))
        (local.set $b (select (i32.add (local.get $bias) (i32.shl (local.get $j) (i32.const 2))) (i32.const 0) (local.get $bias)))
        (local.set $i (i32.const 0))
        (block $mdone
          (loop $mpair
            (br_if $mdone (i32.gt_u (i32.add (local.get $i) (i32.const 2)) (local.get $m)))
            (local.set $xrow (i32.add (local.get $x) (i32.mul (local.get $i) (i32.shl (local.get $k) (i32.const 2)))))
            (local.set $orow (i32.add (local.get $out) (i32.shl (i32.add (i32.mul (local.get $i) (local.get $n)) (local.get $j)) (i32.const 2))))
            (call $tile4x2
              (local.get $xrow)
              (i32.add (local.get $xrow) (i32.shl (local.get $k) (i32.const 2)))
              (local.get $wg) (local.get $k)
              (local.get $orow)
              (i32.add (local.get $orow) (i32.shl (local.get $n) (i32.const 2)))
              (local.get $b))
            (local.set $i (i32.add (local.get $i) (i32.const 2)))
            (br $mpair)))
        (if (i32.lt_u (local.get $i) (local.get $m))
          (then
            (call $tile4x1
              (i32.add (local.get $x) (i32.mul (local.get $i) (i32.shl (local.get $k) (i32.const 2))))
              (local.get $wg) (local.get $k)
              (i32.add (local.get $out) (i32.shl (i32.add (i32.mul (local.get $i) (local.get $n)) (local.get $j)) (i32.const 2)))
              (local.get $b))))
        (local.set $j (i32.add (local.get $j) (i32.const 4)))
        (br $ngroup))))

  ;; out[n] = x . w[n, :] (+ bias[n]) for n < N, one x row, bf16 weights [N, K] decoded in
  ;; registers; the same per-element steps as $tile4x1 (the decode to f32 is exact).
  (func (export "mm1_bf16") (param $x i32) (param $k i32) (param $w i32) (param $n i32) (param $out i32) (param $bias i32)
    (local $j i32) (local $w0 i32) (local $w1 i32) (local $w2 i32) (local $w3 i32) (local $xa i32) (local $end i32)
    (local $va v128)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local.set $end (i32.add (local.get $x) (i32.shl (local.get $k) (i32.const 2))))
    (block $ndone
      (loop $ngroup
        (br_if $ndone (i32.ge_u (local.get $j) (local.get $n)))
        (local.set $w0 (i32.add (local.get $w) (i32.mul (local.get $j) (i32.shl (local.get $k) (i32.const 1)))))
        (local.set $w1 (i32.add (local.get $w0) (i32.shl (local.get $k) (i32.const 1))))
        (local.set $w2 (i32.add (local.get $w1) (i32.shl (local.get $k) (i32.const 1))))
        (local.set $w3 (i32.add (local.get $w2) (i32.shl (local.get $k) (i32.const 1))))
        (local.set $xa (local.get $x))
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0))
        (local.set $a3 (v128.const i32x4 0 0 0 0))
        (block $kdone
          (loop $kstep
            (br_if $kdone (i32.ge_u (local.get $xa) (local.get $end)))
            (local.set $va (v128.load (local.get $xa)))
            (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $va) (i32x4.shl (v128.load16x4_u (local.get $w0)) (i32.const 16)))))
            (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $va) (i32x4.shl (v128.load16x4_u (local.get $w1)) (i32.const 16)))))
            (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $va) (i32x4.shl (v128.load16x4_u (local.get $w2)) (i32.const 16)))))
            (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $va) (i32x4.shl (v128.load16x4_u (local.get $w3)) (i32.const 16)))))
            (local.set $va (v128.load offset=16 (local.get $xa)))
            (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $va) (i32x4.shl (v128.load16x4_u offset=8 (local.get $w0)) (i32.const 16)))))
            (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $va) (i32x4.shl (v128.load16x4_u offset=8 (local.get $w1)) (i32.const 16)))))
            (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $va) (i32x4.shl (v128.load16x4_u offset=8 (local.get $w2)) (i32.const 16)))))
            (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $va) (i32x4.shl (v128.load16x4_u offset=8 (local.get $w3)) (i32.const 16)))))
            (local.set $xa (i32.add (local.get $xa) (i32.const 32)))
            (local.set $w0 (i32.add (local.get $w0) (i32.const 16)))
            (local.set $w1 (i32.add (local.get $w1) (i32.const 16)))
            (local.set $w2 (i32.add (local.get $w2) (i32.const 16)))
            (local.set $w3 (i32.add (local.get $w3) (i32.const 16)))
            (br $kstep)))
        (call $finish (local.get $a0) (local.get $a1) (local.get $a2) (local.get $a3)
          (i32.add (local.get $out) (i32.shl (local.get $j) (i32.const 2)))
          (select (i32.add (local.get $bias) (i32.shl (local.get $j) (i32.const 2))) (i32.const 0) (local.get $bias)))
        (local.set $j (i32.add (local.get $j) (i32.const 4)))
        (br $ngroup))))
)
