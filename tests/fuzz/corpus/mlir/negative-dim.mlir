builtin.module {
  func.func @main(%x: tensor<-2x3xf32> {attnc.name = "x"}, %k: tensor<2x3xi1> {attnc.name = "keep"}) -> (tensor<-2x3xf32> {attnc.name = "y"}) {
    %a = sparse.neg %x : tensor<-2x3xf32> -> tensor<-2x3xf32>
    %b = sparse.where %k, %a, %x : tensor<2x3xi1>, tensor<-2x3xf32>, tensor<-2x3xf32> -> tensor<-2x3xf32>
    func.return %b : tensor<-2x3xf32>
  }
}
