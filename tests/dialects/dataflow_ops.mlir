// dataflow kernels and yields in their custom form (round-trip test input)
builtin.module {
  func.func @main(%a: tensor<4x8xf32>, %b: tensor<8x4xf32>) -> tensor<4x4xf32> {
    %la = dataflow.kernel "load_a"(%a) attributes {kind = "dma_load", tile_kind = "dma", loops = ["burst"], trips = array<i64: 1>, tile = array<i64>, buffer_bytes = 256 : i64, cycles = 10 : i64, macs = 0 : i64, tokens = array<i64: 1>} : (tensor<4x8xf32>) -> tensor<4x8xf32> {
    ^bb0(%x: tensor<4x8xf32>):
      dataflow.yield %x : tensor<4x8xf32>
    }
    %lb = dataflow.kernel "load_b"(%b) attributes {kind = "dma_load", tile_kind = "dma", loops = ["burst"], trips = array<i64: 1>, tile = array<i64>, buffer_bytes = 256 : i64, cycles = 10 : i64, macs = 0 : i64, tokens = array<i64: 1>} : (tensor<8x4xf32>) -> tensor<8x4xf32> {
    ^bb0(%x: tensor<8x4xf32>):
      dataflow.yield %x : tensor<8x4xf32>
    }
    %c = dataflow.kernel "mm"(%la, %lb) attributes {kind = "gemm", tile_kind = "compute", loops = ["m", "n", "k"], trips = array<i64: 1, 1, 2>, tile = array<i64: 4, 4, 4>, buffer_bytes = 384 : i64, cycles = 16 : i64, macs = 128 : i64, tokens = array<i64: 1>, group = "g0"} : (tensor<4x8xf32>, tensor<8x4xf32>) -> tensor<4x4xf32> {
    ^bb0(%x: tensor<4x8xf32>, %y: tensor<8x4xf32>):
      %r = sparse.matmul %x, %y : tensor<4x8xf32>, tensor<8x4xf32> -> tensor<4x4xf32>
      %e = sparse.exp %r : tensor<4x4xf32> -> tensor<4x4xf32>
      dataflow.yield %e : tensor<4x4xf32>
    }
    func.return %c : tensor<4x4xf32>
  }
}
