// a two-kernel configuration in the array dialect (round-trip and verifier test input)
builtin.module {
  array.config "main" attributes {arch = "tiny", fingerprint = "ed6cc94ae3b17076", dram_bytes = 128 : i64} {
    array.io "x" attributes {direction = "input", type = tensor<4xf32>, address = 0 : i64}
    array.io "y" attributes {direction = "output", type = tensor<4xf32>, address = 64 : i64}
    array.tile "t0_1" attributes {x = 0 : i64, y = 1 : i64, kind = "dma"} {
      array.context "load_x" attributes {kernel = 0 : i64, kind = "dma_load", inputs = array<i64: 0>, outputs = array<i64: 1>, loops = ["burst"], trips = array<i64: 1>, tile = array<i64: 4096>, buffers = ["work"], buffer_addresses = array<i64: 0>, buffer_sizes = array<i64: 512>, cycles = 95 : i64, macs = 0 : i64} {
      ^bb0(%a: tensor<4xf32>):
        dataflow.yield %a : tensor<4xf32>
      }
      array.context "store_y" attributes {kernel = 2 : i64, kind = "dma_store", inputs = array<i64: 2>, outputs = array<i64: 3>, loops = ["burst"], trips = array<i64: 1>, tile = array<i64: 4096>, buffers = ["work"], buffer_addresses = array<i64: 512>, buffer_sizes = array<i64: 512>, cycles = 95 : i64, macs = 0 : i64} {
      ^bb0(%a: tensor<4xf32>):
        dataflow.yield %a : tensor<4xf32>
      }
    }
    array.tile "t1_1" attributes {x = 1 : i64, y = 1 : i64, kind = "sfu"} {
      array.context "exp" attributes {kernel = 1 : i64, kind = "elementwise", inputs = array<i64: 1>, outputs = array<i64: 2>, loops = ["rows"], trips = array<i64: 1>, tile = array<i64: 1, 4>, buffers = ["work"], buffer_addresses = array<i64: 0>, buffer_sizes = array<i64: 64>, cycles = 2 : i64, macs = 0 : i64} {
      ^bb0(%a: tensor<4xf32>):
        %e = sparse.exp %a : tensor<4xf32> -> tensor<4xf32>
        dataflow.yield %e : tensor<4xf32>
      }
    }
    array.route "s1:exp" attributes {stream = 1 : i64, src = 0 : i64, dst = 1 : i64, hops = array<i64: 0, 1, 1, 1>, vc = 0 : i64, bytes = 16 : i64, rate = 0.16 : f64}
    array.route "s2:store_y" attributes {stream = 2 : i64, src = 1 : i64, dst = 2 : i64, hops = array<i64: 1, 1, 0, 1>, vc = 0 : i64, bytes = 16 : i64, rate = 0.16 : f64}
    array.dma "dma_load_x" attributes {channel = array<i64: 0, 1>, direction = "load", stream = 1 : i64, address = 0 : i64, bytes = 16 : i64, kernel = 0 : i64}
    array.dma "dma_store_y" attributes {channel = array<i64: 0, 1>, direction = "store", stream = 2 : i64, address = 64 : i64, bytes = 16 : i64, kernel = 2 : i64}
  }
}
